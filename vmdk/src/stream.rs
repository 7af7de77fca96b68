//! streamOptimized writer in the VMware layout (GD_AT_END; grain, GT, GD, footer and EOS markers),
//! with grains compressed in parallel by crossbeam workers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{io, Error, Result};
use crate::header::{
    Marker, SparseHeader, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NL_DETECT, GD_AT_END, MARKER_GD, MARKER_GT, SECTOR,
};
use crate::image::BlockDevice;

/// Grain size of the streams we write (64 KiB).
pub const STREAM_GRAIN_SECTORS: u64 = 128;

/// Sequential writer of a streamOptimized extent. Grains must be given in increasing order.
pub struct StreamWriter {
    file: BufWriter<File>,
    path: PathBuf,
    pos: u64,
    hdr: SparseHeader,
    gd: Vec<u32>,
    cur: Option<(usize, Vec<u32>)>,
    last: Option<u64>,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter").field("path", &self.path).field("pos", &self.pos).finish()
    }
}

/// zlib-compresses one grain (RFC 1950, as qemu and VMware read it).
pub fn compress_grain(data: &[u8], level: u32) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(level), true);
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    loop {
        let before = c.total_in() as usize;
        out.reserve(data.len() / 4 + 1024);
        match c.compress_vec(&data[before..], &mut out, flate2::FlushCompress::Finish) {
            Ok(flate2::Status::StreamEnd) => break,
            Ok(_) => continue,
            Err(_) => unreachable!("in-memory deflate of a complete buffer cannot fail"),
        }
    }
    out
}

impl StreamWriter {
    /// Creates the file and writes the header (GD_AT_END) and the embedded descriptor.
    pub fn create(path: &Path, capacity: u64, descriptor: &str) -> Result<StreamWriter> {
        let mut h = SparseHeader::new(capacity, STREAM_GRAIN_SECTORS);
        h.version = 3;
        h.flags = FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS;
        h.compress_algorithm = 1;
        h.desc_offset = 1;
        h.desc_size = (descriptor.len() as u64).div_ceil(SECTOR).max(20);
        h.rgd_offset = 0;
        h.gd_offset = GD_AT_END;
        h.overhead = (1 + h.desc_size).div_ceil(h.grain_size) * h.grain_size;
        let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path).map_err(io(path))?;
        let mut w = StreamWriter {
            file: BufWriter::with_capacity(1 << 20, f),
            path: path.to_path_buf(),
            pos: 0,
            hdr: h,
            gd: vec![0; h.gd_entries() as usize],
            cur: None,
            last: None,
        };
        w.put(&h.to_bytes())?;
        let mut d = descriptor.as_bytes().to_vec();
        d.resize((h.overhead - 1) as usize * SECTOR as usize, 0);
        w.put(&d)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.file.write_all(b).map_err(io(&self.path))?;
        let before = self.pos;
        self.pos += b.len() as u64;
        if before >> 25 != self.pos >> 25 {
            // Every 32 MiB, start write-back so the final sync has little left to do.
            use std::os::fd::AsRawFd;
            // SAFETY: sync_file_range only starts write-back of this file's dirty pages; it does
            // not touch memory we own. Failure is harmless (finish still syncs), so it is ignored.
            unsafe {
                libc::sync_file_range(self.file.get_ref().as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let r = (self.pos % SECTOR) as usize;
        if r != 0 {
            self.put(&[0u8; 512][..512 - r])?;
        }
        Ok(())
    }

    /// Appends grain `grain` (index) whose zlib-compressed data is `z`.
    pub fn write_compressed(&mut self, grain: u64, z: &[u8]) -> Result<()> {
        if self.last.is_some_and(|l| grain <= l) || grain * self.hdr.grain_size >= self.hdr.capacity {
            return Err(Error::InvalidArgument(format!("stream grain {grain} out of order or beyond the capacity")));
        }
        self.last = Some(grain);
        let per = self.hdr.num_gtes_per_gt as u64;
        let idx = (grain / per) as usize;
        if self.cur.as_ref().is_some_and(|c| c.0 != idx) {
            self.finish_gt()?;
        }
        if self.cur.is_none() {
            self.cur = Some((idx, vec![0; per as usize]));
        }
        let sector = self.pos / SECTOR;
        if sector > u64::from(u32::MAX) {
            return Err(Error::InvalidArgument("stream larger than 2 TiB".into()));
        }
        let mut m = [0u8; 12];
        m[0..8].copy_from_slice(&(grain * self.hdr.grain_size).to_le_bytes());
        m[8..12].copy_from_slice(&(z.len() as u32).to_le_bytes());
        self.put(&m)?;
        self.put(z)?;
        self.pad()?;
        self.cur.as_mut().expect("set above").1[(grain % per) as usize] = sector as u32;
        Ok(())
    }

    fn finish_gt(&mut self) -> Result<()> {
        if let Some((idx, gt)) = self.cur.take() {
            let n = self.hdr.gt_sectors();
            self.put(&Marker::metadata(n, MARKER_GT))?;
            self.gd[idx] = (self.pos / SECTOR) as u32;
            let mut b: Vec<u8> = gt.iter().flat_map(|e| e.to_le_bytes()).collect();
            b.resize((n * SECTOR) as usize, 0);
            self.put(&b)?;
        }
        Ok(())
    }

    /// Writes the last GT, the GD, the footer and the end-of-stream marker, and syncs.
    pub fn finish(mut self) -> Result<()> {
        self.finish_gt()?;
        let n = self.hdr.gd_sectors();
        self.put(&Marker::metadata(n, MARKER_GD))?;
        let gd_sector = self.pos / SECTOR;
        let mut b: Vec<u8> = self.gd.iter().flat_map(|e| e.to_le_bytes()).collect();
        b.resize((n * SECTOR) as usize, 0);
        self.put(&b)?;
        self.put(&Marker::metadata(1, crate::header::MARKER_FOOTER))?;
        let mut footer = self.hdr;
        footer.gd_offset = gd_sector;
        self.put(&footer.to_bytes())?;
        self.put(&[0u8; 512])?;
        let f = self.file.into_inner().map_err(|e| Error::Io { path: self.path.clone(), cause: e.into_error() })?;
        f.sync_all().map_err(io(&self.path))
    }
}

/// Default zlib level: close to qemu's output size (level 6) at a fraction of the CPU time.
pub const DEFAULT_LEVEL: u32 = 3;

/// Tuning of the parallel stream writer.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    /// Compression workers (0 = one per available core).
    pub threads: usize,
    /// zlib level 0..=9.
    pub level: u32,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions { threads: 0, level: DEFAULT_LEVEL }
    }
}

type Batch = Vec<(u64, Vec<u8>)>;

/// Copies the data ranges `ranges` (byte ranges; everything else is zero) of `src` into a new
/// streamOptimized image at `dst` with the embedded descriptor `descriptor`. Grains are read in
/// order, compressed by worker threads, and written in order. `progress` gets bytes processed.
pub fn write_stream(
    src: &dyn BlockDevice,
    ranges: &[(u64, u64)],
    dst: &Path,
    descriptor: &str,
    opts: StreamOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    let size = src.len();
    let capacity = size.div_ceil(SECTOR);
    let mut w = StreamWriter::create(dst, capacity, descriptor)?;
    let gb = STREAM_GRAIN_SECTORS * SECTOR;
    // Grain indices to visit, as runs.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &(s, l) in ranges {
        let (a, b) = (s / gb, (s + l).div_ceil(gb));
        match runs.last_mut() {
            Some(r) if r.1 >= a => r.1 = r.1.max(b),
            _ => runs.push((a, b)),
        }
    }
    let threads =
        if opts.threads == 0 { std::thread::available_parallelism().map_or(2, |n| n.get()) } else { opts.threads };
    let level = opts.level.min(9);
    const BATCH: u64 = 16;
    let (job_tx, job_rx) = crossbeam::channel::bounded::<(u64, Batch)>(threads * 4);
    let (res_tx, res_rx) = crossbeam::channel::bounded::<Result<(u64, Batch)>>(threads * 4);
    std::thread::scope(|scope| -> Result<()> {
        // Reader.
        let rtx = res_tx.clone();
        scope.spawn(move || {
            let mut seq = 0u64;
            let mut buf = vec![0u8; (BATCH * gb) as usize];
            for (a, b) in runs {
                let mut g = a;
                while g < b {
                    let n = (b - g).min(BATCH);
                    let off = g * gb;
                    let len = (n * gb).min(size - off) as usize;
                    if let Err(e) = src.read_at(&mut buf[..len], off) {
                        let _ = rtx.send(Err(e));
                        return;
                    }
                    let mut batch = Vec::new();
                    for (i, c) in buf[..len].chunks(gb as usize).enumerate() {
                        if c.iter().any(|&x| x != 0) {
                            batch.push((g + i as u64, c.to_vec()));
                        }
                    }
                    if job_tx.send((seq, batch)).is_err() {
                        return;
                    }
                    progress(len as u64);
                    seq += 1;
                    g += n;
                }
            }
        });
        for _ in 0..threads {
            let rx = job_rx.clone();
            let tx = res_tx.clone();
            scope.spawn(move || {
                for (seq, batch) in rx {
                    let out = batch.into_iter().map(|(g, d)| (g, compress_grain(&d, level))).collect();
                    if tx.send(Ok((seq, out))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(job_rx);
        drop(res_tx);
        // Owned here so that an early error return disconnects the workers instead of blocking them.
        let res_rx = res_rx;
        let mut pending: BTreeMap<u64, Batch> = BTreeMap::new();
        let mut next = 0u64;
        for r in res_rx.iter() {
            let (seq, batch) = r?;
            pending.insert(seq, batch);
            while let Some(b) = pending.remove(&next) {
                for (g, z) in b {
                    w.write_compressed(g, &z)?;
                }
                next += 1;
            }
        }
        Ok(())
    })?;
    w.finish()
}
