//! Hosted sparse extents (KDMV): lookup, reads (plain and compressed), writes with grain allocation,
//! redundant GD/GT kept in sync, zeroed-grain GTEs, and the consistency check.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{io, Error, Result};
use crate::header::{Marker, SparseHeader, GD_AT_END, MARKER_EOS, MARKER_FOOTER, SECTOR};

/// Where the data of one grain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// Not allocated: read the parent, or zeros.
    Unallocated,
    /// Zeroed-grain GTE: zeros, do not read the parent.
    Zero,
    /// Plain grain at this sector.
    Data(u64),
    /// Compressed grain (marker) at this sector.
    Compressed(u64),
}

pub(crate) struct SparseExtent {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    /// Effective header (the footer's copy for GD_AT_END streams).
    pub(crate) hdr: SparseHeader,
    /// Header as found in sector 0.
    pub(crate) hdr0: SparseHeader,
    pub(crate) gd: Vec<u32>,
    pub(crate) rgd: Option<Vec<u32>>,
    gts: HashMap<usize, Vec<u32>>,
    dirty_gts: BTreeSet<usize>,
    gd_dirty: bool,
    next_sector: u64,
    pub(crate) file_len: u64,
    /// First sector after the header and the embedded descriptor.
    min_meta: u64,
    cache: Option<(u64, Vec<u8>)>,
    zbuf: Vec<u8>,
    inflater: flate2::Decompress,
    /// Bytes written since write-back was last started.
    unsynced: u64,
    /// Something was written since the last flush (data, tables or a repair).
    dirty: bool,
    /// fdatasync calls made on this extent (for tests and diagnostics).
    pub(crate) syncs: u64,
    /// File size in sectors when opened. A pointer read from the file is valid only below it: one
    /// past the old end would become "valid" once this session appends, and then alias new
    /// grains or tables (a stale redundant GT pointer at EOF was written over a new grain).
    open_sectors: u64,
    /// Grain tables this session allocated (valid beyond `open_sectors`).
    fresh_tables: HashSet<u64>,
    /// Why the directories cannot be written back safely (they overlap each other, the header or
    /// the tables they point to, e.g. after a capacity larger than the layout was made for).
    /// Writes are then refused; `check` reports it.
    pub(crate) layout_error: Option<String>,
}

/// Whether writing the grain directories back would overwrite other metadata.
fn layout_conflict(h: &SparseHeader, min_meta: u64, gd: &[u32], rgd: Option<&[u32]>) -> Option<String> {
    if h.compressed() {
        return None; // never written
    }
    let gds = h.gd_sectors();
    let mut dirs = vec![("grain directory", h.gd_offset)];
    if rgd.is_some() {
        dirs.push(("redundant grain directory", h.rgd_offset));
    }
    let overlaps = |a: u64, alen: u64, b: u64, blen: u64| a < b.saturating_add(blen) && b < a.saturating_add(alen);
    for &(name, off) in &dirs {
        if off < min_meta {
            return Some(format!("the {name} (sector {off}) overlaps the header or the embedded descriptor"));
        }
    }
    if dirs.len() == 2 && overlaps(dirs[0].1, gds, dirs[1].1, gds) {
        return Some("the grain directory and its redundant copy overlap (capacity too large for the layout?)".into());
    }
    let gts = h.gt_sectors();
    for t in gd.iter().chain(rgd.unwrap_or_default()) {
        let t = u64::from(*t);
        if t == 0 {
            continue;
        }
        for &(name, off) in &dirs {
            // A single entry pointing exactly at a directory is a damaged entry: it is never read
            // or written through (and a redundant one is relocated on write). Tables inside a
            // directory's area past its start mean the directory grew over them: writing it back
            // would overwrite live tables.
            if t != off && overlaps(t, gts, off, gds) {
                return Some(format!(
                    "a grain table (sector {t}) lies inside the {name} (sectors {off}..{}; capacity too large for the layout?)",
                    off + gds
                ));
            }
        }
    }
    None
}

/// In-memory value of a grain table entry that pointed past the end of the file as opened.
/// Never a valid sector: allocation stops below 2^32 - 1.
const STALE: u32 = u32::MAX;

/// Largest compressed grain we read: deflate's worst case for a 32 MiB grain plus slack.
fn max_compressed(grain_bytes: usize) -> usize {
    grain_bytes + grain_bytes / 8 + 4096
}

fn read_u32s(file: &File, path: &Path, sector: u64, n: usize) -> Result<Vec<u32>> {
    let mut b = vec![0u8; n * 4];
    file.read_exact_at(&mut b, sector * SECTOR).map_err(io(path))?;
    Ok(b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn u32s_to_bytes(v: &[u32], pad_to: usize) -> Vec<u8> {
    let mut b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    b.resize(pad_to.max(b.len()), 0);
    b
}

impl SparseExtent {
    pub(crate) fn open(path: &Path, file: File) -> Result<SparseExtent> {
        let file_len = file.metadata().map_err(io(path))?.len();
        let mut b = [0u8; 512];
        let n = read_full(&file, &mut b, 0).map_err(io(path))?;
        let corrupt = |reason: String| Error::BadHeader { path: path.to_path_buf(), reason };
        let hdr0 = SparseHeader::parse(&b[..n]).map_err(corrupt)?;
        let mut hdr = hdr0;
        if hdr0.gd_offset == GD_AT_END {
            if !hdr0.compressed() {
                return Err(corrupt("gdOffset is GD_AT_END but the extent is not compressed".into()));
            }
            // Footer marker, footer, EOS marker: the last three sectors.
            if file_len < 4 * SECTOR {
                return Err(corrupt("streamOptimized extent too short for a footer".into()));
            }
            let mut f = vec![0u8; 1536];
            file.read_exact_at(&mut f, file_len / SECTOR * SECTOR - 1536).map_err(io(path))?;
            let m = Marker::parse(&f[0..16]);
            let eos = Marker::parse(&f[1024..1040]);
            if m.size != 0 || m.kind != MARKER_FOOTER {
                return Err(corrupt("GD_AT_END but no footer marker before the end of the file".into()));
            }
            if eos.val != 0 || eos.size != 0 || eos.kind != MARKER_EOS {
                return Err(corrupt("GD_AT_END but no end-of-stream marker at the end of the file".into()));
            }
            hdr = SparseHeader::parse(&f[512..1024]).map_err(|r| corrupt(format!("footer: {r}")))?;
            if hdr.gd_offset == GD_AT_END {
                return Err(corrupt("footer also says GD_AT_END".into()));
            }
        }
        hdr.validate_layout(file_len).map_err(corrupt)?;
        if hdr0.gd_offset == GD_AT_END {
            // The sector-0 header's descriptor fields are used too.
            hdr0.validate_layout(file_len).map_err(corrupt)?;
        }
        let min_meta = if hdr0.desc_offset != 0 { (hdr0.desc_offset + hdr0.desc_size).max(1) } else { 1 };
        let n = usize::try_from(hdr.gd_entries()).map_err(|_| corrupt("GD too large".into()))?;
        let gd = read_u32s(&file, path, hdr.gd_offset, n)?;
        let rgd =
            if hdr.has_rgd() && !hdr.compressed() { Some(read_u32s(&file, path, hdr.rgd_offset, n)?) } else { None };
        let next_sector = file_len.div_ceil(SECTOR).max(hdr.overhead);
        let layout_error = layout_conflict(&hdr, min_meta, &gd, rgd.as_deref());
        Ok(SparseExtent {
            path: path.to_path_buf(),
            file,
            hdr,
            hdr0,
            gd,
            rgd,
            gts: HashMap::new(),
            dirty_gts: BTreeSet::new(),
            gd_dirty: false,
            next_sector,
            file_len,
            min_meta,
            cache: None,
            zbuf: Vec::new(),
            inflater: flate2::Decompress::new(true),
            unsynced: 0,
            dirty: false,
            syncs: 0,
            open_sectors: file_len.div_ceil(SECTOR),
            fresh_tables: HashSet::new(),
            layout_error,
        })
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt { path: self.path.clone(), reason }
    }

    pub(crate) fn grain_bytes(&self) -> usize {
        (self.hdr.grain_size * SECTOR) as usize
    }

    fn file_sectors(&self) -> u64 {
        self.file_len.div_ceil(SECTOR)
    }

    /// Whether a grain table may live at `sector`: past the header and descriptor, inside the
    /// file, and not on top of a grain directory (so writing it cannot clobber metadata).
    fn gt_ptr_ok(&self, sector: u64) -> bool {
        let end = sector + self.hdr.gt_sectors();
        let gds = self.hdr.gd_sectors();
        let clear = |dir: u64| end <= dir || sector >= dir + gds;
        sector >= self.min_meta
            && end <= self.file_sectors()
            && (end <= self.open_sectors || self.fresh_tables.contains(&sector))
            && clear(self.hdr.gd_offset)
            && (self.rgd.is_none() || clear(self.hdr.rgd_offset))
    }

    /// Loads (or returns the cached) primary grain table `idx`; None when the GD entry is 0.
    fn gt(&mut self, idx: usize) -> Result<Option<&mut Vec<u32>>> {
        if !self.gts.contains_key(&idx) {
            let ptr = u64::from(self.gd[idx]);
            if ptr == 0 {
                return Ok(None);
            }
            if !self.gt_ptr_ok(ptr) {
                return Err(self.corrupt(format!(
                    "grain directory entry {idx} points to sector {ptr}, outside the metadata area or past the end of the file"
                )));
            }
            let mut t = read_u32s(&self.file, &self.path, ptr, self.hdr.num_gtes_per_gt as usize)?;
            self.sanitize(&mut t);
            self.gts.insert(idx, t);
        }
        Ok(self.gts.get_mut(&idx))
    }

    /// Status of grain `g` (grain index within the extent).
    pub(crate) fn lookup(&mut self, g: u64) -> Result<Grain> {
        let per = u64::from(self.hdr.num_gtes_per_gt);
        let idx = (g / per) as usize;
        if idx >= self.gd.len() {
            return Ok(Grain::Unallocated);
        }
        let Some(t) = self.gt(idx)? else { return Ok(Grain::Unallocated) };
        let e = u64::from(t[(g % per) as usize]);
        self.classify(e, g)
    }

    /// Marks the entries of a table just read from the file that point at or past the end the file
    /// had when opened: they stay invalid (reads and writes of them fail) even after this session
    /// grows the file. Only entries this session sets may point there.
    fn sanitize(&self, t: &mut [u32]) {
        for e in t.iter_mut() {
            if u64::from(*e) >= self.open_sectors && *e > 1 {
                *e = STALE;
            }
        }
    }

    /// What grain table entry `e` of grain `g` means.
    fn classify(&self, e: u64, g: u64) -> Result<Grain> {
        Ok(match e {
            0 => Grain::Unallocated,
            1 if self.hdr.zeroed_grain() => Grain::Zero,
            s if s < self.min_meta || s >= self.file_sectors() => {
                return Err(self.corrupt(format!(
                    "cluster offset for sector {} points to sector {s}, {}",
                    g * self.hdr.grain_size,
                    if s >= self.file_sectors() { "after EOF" } else { "into the header" }
                )))
            }
            s if self.hdr.compressed() => Grain::Compressed(s),
            s => Grain::Data(s),
        })
    }

    /// Status of grain `g` and how many grains from `g` on (at most `max`, within `g`'s grain table)
    /// share its kind (for maps; an empty GD entry is answered without reading anything). A grain
    /// table that is not cached is read without being cached, so mapping a huge image costs no
    /// memory beyond one table.
    pub(crate) fn lookup_run(&mut self, g: u64, max: u64) -> Result<(Grain, u64)> {
        let per = u64::from(self.hdr.num_gtes_per_gt);
        let idx = (g / per) as usize;
        let limit = (g + max.max(1)).min((g / per + 1) * per);
        if idx >= self.gd.len() || self.gd[idx] == 0 {
            return Ok((Grain::Unallocated, limit - g));
        }
        let table = match self.gts.get(&idx) {
            Some(t) => t.clone(),
            None => {
                let ptr = u64::from(self.gd[idx]);
                if !self.gt_ptr_ok(ptr) {
                    return Err(self.corrupt(format!(
                        "grain directory entry {idx} points to sector {ptr}, outside the metadata area or past the end of the file"
                    )));
                }
                let mut t = read_u32s(&self.file, &self.path, ptr, self.hdr.num_gtes_per_gt as usize)?;
                self.sanitize(&mut t);
                t
            }
        };
        let at = |g: u64| u64::from(table[(g % per) as usize]);
        let first = self.classify(at(g), g)?;
        let mut n = 1;
        while g + n < limit {
            if std::mem::discriminant(&self.classify(at(g + n), g + n)?) != std::mem::discriminant(&first) {
                break;
            }
            n += 1;
        }
        Ok((first, n))
    }

    /// Reads bytes `[off, off+buf.len())` of grain `g` whose status is Data or Compressed.
    pub(crate) fn read_grain(&mut self, g: u64, st: Grain, off: usize, buf: &mut [u8]) -> Result<()> {
        match st {
            Grain::Data(s) => {
                let n = read_full(&self.file, buf, s * SECTOR + off as u64).map_err(io(&self.path))?;
                buf[n..].fill(0);
                Ok(())
            }
            Grain::Compressed(s) => {
                if self.cache.as_ref().is_none_or(|(cg, _)| *cg != g) {
                    self.decompress(g, s)?;
                }
                let (_, data) = self.cache.as_ref().expect("cache filled above");
                buf.copy_from_slice(&data[off..off + buf.len()]);
                Ok(())
            }
            _ => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Decompresses grain `g` (marker at sector `s`) into the one-grain cache.
    fn decompress(&mut self, g: u64, s: u64) -> Result<()> {
        let gb = self.grain_bytes();
        let pos = s * SECTOR;
        let avail = self.file_len.saturating_sub(pos);
        let (start, len) = if self.hdr.markers() {
            let mut m = [0u8; 12];
            self.file.read_exact_at(&mut m, pos).map_err(io(&self.path))?;
            let size = u32::from_le_bytes([m[8], m[9], m[10], m[11]]) as usize;
            if size == 0 || size > max_compressed(gb) || size as u64 + 12 > avail {
                return Err(self
                    .corrupt(format!("compressed grain for sector {} has bad size {size}", g * self.hdr.grain_size)));
            }
            (pos + 12, size)
        } else {
            (pos, avail.min(max_compressed(gb) as u64) as usize)
        };
        let mut c = std::mem::take(&mut self.zbuf);
        c.resize(len, 0);
        let n = read_full(&self.file, &mut c, start).map_err(io(&self.path))?;
        let (_, mut out) = self.cache.take().unwrap_or((u64::MAX, Vec::new()));
        out.resize(gb, 0);
        self.inflater.reset(true);
        let st = self.inflater.decompress(&c[..n], &mut out, flate2::FlushDecompress::Finish);
        self.zbuf = c;
        let total = self.inflater.total_out() as usize;
        let at = g * self.hdr.grain_size;
        match st {
            // A short last grain decompresses to less than a grain: the rest is zero.
            Ok(flate2::Status::StreamEnd) => out[total..].fill(0),
            Ok(_) if total == gb => {}
            Ok(_) => return Err(self.corrupt(format!("truncated compressed grain for sector {at}"))),
            Err(e) => return Err(self.corrupt(format!("bad compressed grain for sector {at}: {e}"))),
        }
        self.cache = Some((g, out));
        Ok(())
    }

    /// Counts written bytes; every 32 MiB starts write-back so bulk writes overlap with the disk
    /// and `flush` has little left to do.
    fn wrote(&mut self, n: usize) {
        self.unsynced += n as u64;
        if self.unsynced >= 32 << 20 {
            self.unsynced = 0;
            use std::os::fd::AsRawFd;
            // SAFETY: sync_file_range only starts write-back of this file's dirty pages; it does
            // not touch memory we own. Failure is harmless (flush still syncs), so it is ignored.
            unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
    }

    fn alloc(&mut self, sectors: u64) -> Result<u64> {
        let s = self.next_sector;
        if s.saturating_add(sectors) > u64::from(u32::MAX) {
            return Err(self.corrupt("sparse extent full (grain offsets are limited to 2 TiB)".into()));
        }
        self.next_sector += sectors;
        Ok(s)
    }

    fn ensure_gt(&mut self, idx: usize) -> Result<()> {
        if self.gd[idx] != 0 {
            return Ok(());
        }
        let n = self.hdr.gt_sectors();
        let s = self.alloc(n)?;
        self.gd[idx] = s as u32;
        self.fresh_tables.insert(s);
        if let Some(r) = self.rgd.as_mut() {
            let rs = self.next_sector;
            if rs.saturating_add(n) > u64::from(u32::MAX) {
                return Err(Error::Corrupt { path: self.path.clone(), reason: "sparse extent full".into() });
            }
            self.next_sector += n;
            r[idx] = rs as u32;
            self.fresh_tables.insert(rs);
        }
        self.gts.insert(idx, vec![0; self.hdr.num_gtes_per_gt as usize]);
        self.dirty_gts.insert(idx);
        self.gd_dirty = true;
        // Reserve the space now so later grains do not land on it.
        let end = self.next_sector * SECTOR;
        if self.file_len < end {
            self.file.set_len(end).map_err(io(&self.path))?;
            self.file_len = end;
        }
        Ok(())
    }

    fn set_gte(&mut self, g: u64, v: u32) -> Result<()> {
        let per = u64::from(self.hdr.num_gtes_per_gt);
        let idx = (g / per) as usize;
        if idx >= self.gd.len() {
            return Err(self.corrupt(format!("grain {g} beyond the grain directory")));
        }
        self.ensure_gt(idx)?;
        let t = self.gt(idx)?.expect("ensured above");
        t[(g % per) as usize] = v;
        self.dirty_gts.insert(idx);
        Ok(())
    }

    /// Writes into grain `g` at byte offset `off`. `fill` provides the content of an unallocated grain
    /// (the parent's data or zeros) when the write does not cover the whole grain.
    pub(crate) fn write_grain(
        &mut self,
        g: u64,
        off: usize,
        data: &[u8],
        fill: &mut dyn FnMut(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        self.dirty = true;
        if let Some(e) = &self.layout_error {
            return Err(self.corrupt(format!("writes refused: {e}")));
        }
        if self.hdr.compressed() {
            return Err(Error::StreamReadOnly { path: self.path.clone() });
        }
        match self.lookup(g)? {
            Grain::Data(s) => {
                // Never write through a damaged pointer into the header, descriptor or tables.
                let end = s + self.hdr.grain_size;
                let gds = self.hdr.gd_sectors();
                let hits = |dir: u64| end > dir && s < dir + gds;
                if s < self.hdr.overhead.min(self.file_sectors())
                    || hits(self.hdr.gd_offset)
                    || self.rgd.is_some() && hits(self.hdr.rgd_offset)
                {
                    return Err(self.corrupt(format!(
                        "grain for sector {} points to sector {s}, inside the metadata area; refusing to write (run check)",
                        g * self.hdr.grain_size
                    )));
                }
                self.file.write_all_at(data, s * SECTOR + off as u64).map_err(io(&self.path))?;
                self.wrote(data.len());
                let end = s * SECTOR + (off + data.len()) as u64;
                self.file_len = self.file_len.max(end);
                Ok(())
            }
            Grain::Compressed(_) => Err(Error::StreamReadOnly { path: self.path.clone() }),
            st @ (Grain::Unallocated | Grain::Zero) => {
                let gb = self.grain_bytes();
                let mut owned;
                let buf: &[u8] = if off == 0 && data.len() == gb {
                    data
                } else {
                    owned = vec![0u8; gb];
                    if st == Grain::Unallocated {
                        fill(&mut owned)?;
                    }
                    owned[off..off + data.len()].copy_from_slice(data);
                    &owned
                };
                // Make sure the GT exists before placing the grain, so the grain follows it in the file.
                self.ensure_gt((g / u64::from(self.hdr.num_gtes_per_gt)) as usize)?;
                let s = self.alloc(self.hdr.grain_size)?;
                // The grain goes to disk before its table entry (the entry is written at flush).
                self.file.write_all_at(buf, s * SECTOR).map_err(io(&self.path))?;
                self.wrote(buf.len());
                self.file_len = self.file_len.max((s + self.hdr.grain_size) * SECTOR);
                self.set_gte(g, s as u32)
            }
        }
    }

    /// Writes whole grains `g, g+1, ...` from `data` (a multiple of the grain size) as one run of
    /// newly allocated, adjacent grains, as long as they are unallocated or zeroed. Returns how many
    /// grains were written (0 if grain `g` is already allocated; the caller then writes it in place).
    pub(crate) fn write_new_grains(&mut self, g: u64, data: &[u8]) -> Result<u64> {
        self.dirty = true;
        if let Some(e) = &self.layout_error {
            return Err(self.corrupt(format!("writes refused: {e}")));
        }
        if self.hdr.compressed() {
            return Err(Error::StreamReadOnly { path: self.path.clone() });
        }
        let gb = self.grain_bytes();
        let per = u64::from(self.hdr.num_gtes_per_gt);
        let max = (data.len() / gb) as u64;
        let mut n = 0;
        while n < max && matches!(self.lookup(g + n)?, Grain::Unallocated | Grain::Zero) {
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        // Tables first, so the grains that follow are adjacent in the file.
        for idx in g / per..=(g + n - 1) / per {
            if idx as usize >= self.gd.len() {
                return Err(self.corrupt(format!("grain {} beyond the grain directory", idx * per)));
            }
            self.ensure_gt(idx as usize)?;
        }
        let s = self.alloc(n * self.hdr.grain_size)?;
        // The grains go to disk before their table entries (written at flush).
        let bytes = &data[..n as usize * gb];
        self.file.write_all_at(bytes, s * SECTOR).map_err(io(&self.path))?;
        self.wrote(bytes.len());
        self.file_len = self.file_len.max(s * SECTOR + bytes.len() as u64);
        for i in 0..n {
            self.set_gte(g + i, (s + i * self.hdr.grain_size) as u32)?;
        }
        Ok(n)
    }

    /// Makes grain `g` read as zeros. `has_parent` says whether an unallocated grain would show parent data.
    pub(crate) fn zero_grain(&mut self, g: u64, has_parent: bool) -> Result<()> {
        self.dirty = true;
        if let Some(e) = &self.layout_error {
            return Err(self.corrupt(format!("writes refused: {e}")));
        }
        if self.hdr.compressed() {
            return Err(Error::StreamReadOnly { path: self.path.clone() });
        }
        match self.lookup(g)? {
            Grain::Zero => Ok(()),
            Grain::Unallocated if !has_parent => Ok(()),
            Grain::Unallocated if self.hdr.zeroed_grain() => self.set_gte(g, 1),
            _ => {
                let z = vec![0u8; self.grain_bytes()];
                self.write_grain(g, 0, &z, &mut |_| Ok(()))
            }
        }
    }

    /// Writes dirty grain tables (primary and redundant) and directories, then syncs.
    /// Nothing written since the last flush: no I/O at all.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if !self.dirty && self.dirty_gts.is_empty() && !self.gd_dirty {
            return Ok(());
        }
        if !self.dirty_gts.is_empty() || self.gd_dirty {
            // Grains reach the disk before the table entries that point to them, also across a
            // power loss (not only a process kill).
            self.sync()?;
        }
        let gt_bytes = (self.hdr.gt_sectors() * SECTOR) as usize;
        for idx in std::mem::take(&mut self.dirty_gts) {
            let b = u32s_to_bytes(&self.gts[&idx], gt_bytes);
            self.file.write_all_at(&b, u64::from(self.gd[idx]) * SECTOR).map_err(io(&self.path))?;
            if let Some(r) = self.rgd.as_ref().map(|r| u64::from(r[idx])) {
                // A missing or unusable redundant table (an interrupted directory update, or damage)
                // gets a fresh place at the end of the file instead of being written over metadata.
                let r = if self.gt_ptr_ok(r) {
                    r
                } else {
                    let n = self.hdr.gt_sectors();
                    let s = self.alloc(n)?;
                    self.fresh_tables.insert(s);
                    self.file_len = self.file_len.max((s + n) * SECTOR);
                    self.rgd.as_mut().expect("checked above")[idx] = s as u32;
                    self.gd_dirty = true;
                    s
                };
                self.file.write_all_at(&b, r * SECTOR).map_err(io(&self.path))?;
            }
        }
        if self.gd_dirty {
            let gdb = (self.hdr.gd_sectors() * SECTOR) as usize;
            self.file
                .write_all_at(&u32s_to_bytes(&self.gd, gdb), self.hdr.gd_offset * SECTOR)
                .map_err(io(&self.path))?;
            if let Some(r) = &self.rgd {
                self.file.write_all_at(&u32s_to_bytes(r, gdb), self.hdr.rgd_offset * SECTOR).map_err(io(&self.path))?;
            }
            self.gd_dirty = false;
        }
        self.sync()?;
        self.dirty = false;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.syncs += 1;
        self.file.sync_data().map_err(io(&self.path))
    }

    /// Checks the extent. See [`crate::check`].
    pub(crate) fn check(&mut self, repair: bool, rep: &mut crate::check::CheckReport) -> Result<()> {
        if let Some(e) = &self.layout_error {
            // Nothing below may be written back: report and stop.
            rep.corruptions.push(format!("{}: {e}", self.path.display()));
            return Ok(());
        }
        self.dirty |= repair;
        let name = self.path.display().to_string();
        let fs = self.file_sectors();
        let gs = self.hdr.grain_size;
        let gts = self.hdr.gt_sectors();
        let per = self.hdr.num_gtes_per_gt as usize;
        let compressed = self.hdr.compressed();
        // Used ranges: (start, end, what).
        let mut used: Vec<(u64, u64, String)> = vec![(0, 1, "header".into())];
        if self.hdr0.desc_offset != 0 {
            used.push((self.hdr0.desc_offset, self.hdr0.desc_offset + self.hdr0.desc_size, "descriptor".into()));
        }
        used.push((self.hdr.gd_offset, self.hdr.gd_offset + self.hdr.gd_sectors(), "grain directory".into()));
        if let Some(_r) = &self.rgd {
            used.push((self.hdr.rgd_offset, self.hdr.rgd_offset + self.hdr.gd_sectors(), "redundant GD".into()));
        }
        let mut fix_gd = false;
        let mut fixed_gts: Vec<(usize, Vec<u32>)> = Vec::new();
        for idx in 0..self.gd.len() {
            let p = u64::from(self.gd[idx]);
            let ok = |s: u64| s >= self.min_meta && s + gts <= fs;
            let mut prim: Option<Vec<u32>> = None;
            if p != 0 {
                if ok(p) {
                    prim = Some(read_u32s(&self.file, &self.path, p, per)?);
                    used.push((p, p + gts, format!("grain table {idx}")));
                } else {
                    rep.corruptions.push(format!(
                        "{name}: GD entry {idx} points to sector {p}, {}",
                        if p + gts > fs { "past the end of the file" } else { "into the header" }
                    ));
                }
            }
            let mut red: Option<Vec<u32>> = None;
            if let Some(r) = &self.rgd {
                let rp = u64::from(r[idx]);
                if rp != 0 && ok(rp) {
                    red = Some(read_u32s(&self.file, &self.path, rp, per)?);
                    used.push((rp, rp + gts, format!("redundant grain table {idx}")));
                } else if rp != 0 {
                    rep.corruptions
                        .push(format!("{name}: redundant GD entry {idx} points to sector {rp}, outside the file"));
                }
                if (p != 0) != (rp != 0) {
                    // An interrupted directory update (one copy written, the other not yet).
                    rep.leaks.push(format!(
                        "{name}: GD entry {idx} is {p} but redundant GD entry is {rp} (interrupted update)"
                    ));
                }
            }
            // Primary missing or broken but redundant good: adopt the redundant table.
            if prim.is_none() && p != 0 {
                if let Some(t) = &red {
                    if repair {
                        self.gd[idx] = self.rgd.as_ref().expect("red implies rgd")[idx];
                        fix_gd = true;
                        rep.repaired.push(format!("{name}: GD entry {idx} restored from the redundant GD"));
                        prim = Some(t.clone());
                    }
                }
            }
            if let (Some(t), Some(rt)) = (&prim, &red) {
                let mut fixed = t.clone();
                let mut changed = false;
                for i in 0..per {
                    if t[i] == rt[i] {
                        continue;
                    }
                    let stale = t[i] != 0 && rt[i] == 0 || t[i] == 0 && rt[i] != 0;
                    let msg =
                        format!("{name}: grain table {idx} entry {i}: GT has {} but redundant GT has {}", t[i], rt[i]);
                    let valid = |e: u32| e == 0 || e == 1 && self.hdr.zeroed_grain() || u64::from(e) < fs;
                    if stale {
                        // An interrupted table update: one copy was written, the other not yet.
                        rep.leaks.push(format!("{msg} (interrupted update)"));
                    } else {
                        rep.corruptions.push(msg);
                    }
                    if !valid(t[i]) && valid(rt[i]) {
                        fixed[i] = rt[i];
                        changed = true;
                    }
                }
                if repair {
                    fixed_gts.push((idx, fixed.clone()));
                    if changed || fixed != *rt {
                        rep.repaired.push(format!("{name}: grain table {idx} and its redundant copy resynchronised"));
                    }
                }
                prim = Some(fixed);
            }
            let Some(t) = prim.or(red) else { continue };
            for (i, &e) in t.iter().enumerate() {
                let e = u64::from(e);
                if e == 0 || e == 1 && self.hdr.zeroed_grain() {
                    continue;
                }
                let sector = (idx * per + i) as u64 * gs;
                if e >= fs {
                    rep.corruptions.push(format!("{name}: ERROR: cluster offset for sector {sector} points after EOF"));
                    continue;
                }
                if e < self.min_meta {
                    rep.corruptions.push(format!("{name}: cluster offset for sector {sector} points into the header"));
                    continue;
                }
                let len = if compressed {
                    // Every compressed grain must decompress, and its marker must name its own sector.
                    if let Err(err) = self.decompress((idx * per + i) as u64, e) {
                        rep.corruptions.push(format!("{name}: {err}"));
                        continue;
                    }
                    if self.hdr.markers() {
                        let mut m = [0u8; 12];
                        self.file.read_exact_at(&mut m, e * SECTOR).map_err(io(&self.path))?;
                        let lba = u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7]]);
                        if lba != sector {
                            rep.corruptions.push(format!(
                                "{name}: grain marker at sector {e} says LBA {lba} but the table maps it to sector {sector}"
                            ));
                        }
                        (12 + u64::from(u32::from_le_bytes([m[8], m[9], m[10], m[11]]))).div_ceil(SECTOR)
                    } else {
                        1
                    }
                } else {
                    gs
                };
                used.push((e, e + len, format!("grain for sector {sector}")));
            }
        }
        if repair {
            let gt_bytes = (gts * SECTOR) as usize;
            for (idx, t) in fixed_gts {
                let b = u32s_to_bytes(&t, gt_bytes);
                self.file.write_all_at(&b, u64::from(self.gd[idx]) * SECTOR).map_err(io(&self.path))?;
                if let Some(r) = &self.rgd {
                    self.file.write_all_at(&b, u64::from(r[idx]) * SECTOR).map_err(io(&self.path))?;
                }
                self.gts.insert(idx, t);
            }
            if fix_gd {
                self.gd_dirty = true;
            }
            self.flush()?;
        }
        // Overlaps and leaks.
        used.sort();
        let mut end = 0u64;
        let mut last = String::new();
        let mut holes: Vec<(u64, u64)> = Vec::new();
        for (s, e, what) in &used {
            if *s < end {
                rep.corruptions.push(format!("{name}: {what} (sectors {s}..{e}) overlaps {last}"));
            } else if *s > end {
                holes.push((end, *s));
            }
            if *e > end {
                end = *e;
                last = what.clone();
            }
        }
        if !compressed {
            let overhead = self.hdr.overhead;
            for (s, e) in holes {
                let s = s.max(overhead);
                if e > s && e - s >= gs {
                    rep.leaks.push(format!("{name}: sectors {s}..{e} are allocated but unused (leaked)"));
                }
            }
            if fs > end.max(overhead) {
                let tail = end.max(overhead);
                rep.leaks.push(format!("{name}: sectors {tail}..{fs} at the end of the file are leaked"));
                if repair {
                    self.file.set_len(tail * SECTOR).map_err(io(&self.path))?;
                    self.file_len = tail * SECTOR;
                    self.next_sector = tail;
                    rep.repaired.push(format!("{name}: truncated the leaked tail"));
                }
            }
        }
        rep.allocated_grains += used.iter().filter(|u| u.2.starts_with("grain for")).count() as u64;
        Ok(())
    }
}

/// Reads as much as possible at `pos` (stops at EOF); returns the count.
pub(crate) fn read_full(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], pos + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Options of a new hosted sparse extent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SparseLayout {
    pub capacity: u64,
    pub grain_size: u64,
    pub zeroed_grain: bool,
    /// Sectors reserved for an embedded descriptor at sector 1 (0 = none).
    pub desc_sectors: u64,
}

/// Creates a hosted sparse extent file with qemu's layout (descriptor, RGD+RGTs, GD+GTs preallocated).
pub(crate) fn create_sparse(path: &Path, l: SparseLayout, descriptor: Option<&str>) -> Result<()> {
    let mut h = SparseHeader::new(l.capacity, l.grain_size);
    if l.zeroed_grain {
        h.version = 2;
        h.flags |= crate::header::FLAG_ZEROED_GRAIN;
    }
    if l.desc_sectors > 0 {
        h.desc_offset = 1;
        h.desc_size = l.desc_sectors;
    }
    let gd_entries = h.gd_entries();
    let gd_sectors = h.gd_sectors();
    let gt_total = gd_entries * h.gt_sectors();
    h.rgd_offset = 1 + l.desc_sectors;
    h.gd_offset = h.rgd_offset + gd_sectors + gt_total;
    let meta_end = h.gd_offset + gd_sectors + gt_total;
    h.overhead = meta_end.div_ceil(l.grain_size) * l.grain_size;
    if h.overhead + l.capacity > u64::from(u32::MAX) {
        return Err(Error::InvalidArgument(format!(
            "sparse extent of {} sectors exceeds the 2 TiB limit of 32-bit grain offsets",
            l.capacity
        )));
    }
    let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path).map_err(io(path))?;
    file.set_len(h.overhead * SECTOR).map_err(io(path))?;
    file.write_all_at(&h.to_bytes(), 0).map_err(io(path))?;
    if let Some(d) = descriptor {
        if d.len() as u64 > l.desc_sectors * SECTOR {
            return Err(Error::InvalidArgument("descriptor too large for the embedded area".into()));
        }
        file.write_all_at(d.as_bytes(), SECTOR).map_err(io(path))?;
    }
    let gts = h.gt_sectors();
    for (base, dir) in [(h.rgd_offset, h.rgd_offset), (h.gd_offset, h.gd_offset)] {
        let first_gt = base + gd_sectors;
        let gd: Vec<u32> = (0..gd_entries).map(|i| (first_gt + i * gts) as u32).collect();
        file.write_all_at(&u32s_to_bytes(&gd, (gd_sectors * SECTOR) as usize), dir * SECTOR).map_err(io(path))?;
    }
    file.sync_all().map_err(io(path))?;
    Ok(())
}
