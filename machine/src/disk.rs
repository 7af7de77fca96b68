//! Disk images for the IDE controller: any format the `vmdk` crate opens (every VMDK
//! subformat, delta chains, raw), adapted to [`devices::BlockBackend`].
//!
//! A streamOptimized VMDK (the format of OVA/OVF appliances and cloud images) is append-only
//! and cannot be changed in place. Attached writable, it is opened like QEMU's `-snapshot`: the
//! file is read-only and the guest's writes go to a temporary in-memory overlay that is
//! discarded when the process ends. A warning says so at start-up. To keep changes, convert the
//! image first (`ferrovisor disk convert -O vmdk -s monolithicSparse in.vmdk out.vmdk`).
//!
//! A file opened by detection ([`DiskFormat::Auto`]) that turned out raw is guarded as QEMU
//! guards a probed raw image: a guest write that would make its first 4 KiB look like an image
//! format (a VMDK header or descriptor, qcow2, ...) is refused with an I/O error, because the next
//! open would then detect that format and follow whatever file names the guest wrote into it.
//! Naming the format ([`DiskFormat::Raw`], `--disk-format raw`) lifts the guard.

use devices::BlockBackend;
use std::collections::HashMap;
use std::io;
use std::path::Path;

/// Block size of the in-memory overlay.
const OVERLAY_BLOCK: u64 = 4096;

/// How a disk file is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskFormat {
    /// Detected from its first bytes: VMDK (sparse extent or descriptor), otherwise raw.
    #[default]
    Auto,
    /// A raw image, whatever it holds.
    Raw,
    /// A VMDK (sparse extent or descriptor file).
    Vmdk,
}

/// The bytes of a raw image that format detection reads.
const PROBE_LEN: u64 = 4096;

/// A disk image opened through the `vmdk` crate.
pub struct ImageBackend {
    image: vmdk::AnyImage,
    len: u64,
    read_only: bool,
    /// A raw image found by detection: writes must not make it detect as another format.
    probe_guard: bool,
    /// Guest writes kept in memory (streamOptimized images), by block index.
    overlay: Option<HashMap<u64, Box<[u8]>>>,
    /// Written since the last flush.
    dirty: bool,
}

impl std::fmt::Debug for ImageBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageBackend")
            .field("len", &self.len)
            .field("read_only", &self.read_only)
            .field("overlay", &self.overlay.is_some())
            .finish()
    }
}

/// Whether the image holds a compressed (streamOptimized) extent, which cannot be written.
fn is_stream_optimized(image: &vmdk::AnyImage) -> bool {
    match image {
        vmdk::AnyImage::Vmdk(i) => i.extent_info().iter().any(|e| e.header.is_some_and(|h| h.compressed())),
        vmdk::AnyImage::Raw(_) => false,
    }
}

impl ImageBackend {
    /// Opens `path`, detecting VMDK (sparse extent or descriptor) or raw. A writable
    /// streamOptimized image gets an in-memory overlay (see the module documentation) and a
    /// warning is logged.
    pub fn open(path: &Path, read_only: bool) -> vmdk::Result<Self> {
        Self::open_format(path, read_only, DiskFormat::Auto)
    }

    /// Opens `path` as `format` (see [`ImageBackend::open`] for [`DiskFormat::Auto`]).
    pub fn open_format(path: &Path, read_only: bool, format: DiskFormat) -> vmdk::Result<Self> {
        let mut image = match format {
            DiskFormat::Auto => vmdk::AnyImage::open(path, !read_only)?,
            DiskFormat::Raw => vmdk::AnyImage::open_as(path, true, !read_only)?,
            DiskFormat::Vmdk => vmdk::AnyImage::open_as(path, false, !read_only)?,
        };
        let probe_guard = format == DiskFormat::Auto && matches!(image, vmdk::AnyImage::Raw(_));
        let mut overlay = None;
        if !read_only && is_stream_optimized(&image) {
            log::warn!(
                "{}: streamOptimized images cannot be changed in place; the guest's writes are kept in memory \
                 and discarded at exit (convert it to monolithicSparse to keep changes)",
                path.display()
            );
            image = vmdk::AnyImage::open(path, false)?;
            overlay = Some(HashMap::new());
        }
        let len = image.dev().len();
        Ok(ImageBackend { image, len, read_only, probe_guard, overlay, dirty: false })
    }

    /// Opens `path` as `format` read-only, with guest writes (unless `read_only`) going to a
    /// temporary in-memory overlay (as QEMU's `-snapshot`): the file is never written. Lockstep
    /// uses it so that its machines, and its re-runs of them, all start from the same disk.
    pub fn open_snapshot(path: &Path, read_only: bool, format: DiskFormat) -> vmdk::Result<Self> {
        let mut b = Self::open_format(path, true, format)?;
        if !read_only {
            b.read_only = false;
            b.overlay = Some(HashMap::new());
        }
        Ok(b)
    }

    /// Refuses a write of `buf` at `offset` that would make a detected raw image's first bytes
    /// detect as another format.
    fn check_probe_guard(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if !self.probe_guard || offset >= PROBE_LEN {
            return Ok(());
        }
        let mut head = vec![0u8; PROBE_LEN.min(self.len) as usize];
        self.read_at(0, &mut head)?;
        let start = offset as usize;
        if start >= head.len() {
            return Ok(());
        }
        let end = (start + buf.len()).min(head.len());
        head[start..end].copy_from_slice(&buf[..end - start]);
        match vmdk::image::probe_bytes(&head) {
            vmdk::image::Probe::Other => Ok(()),
            found => {
                log::warn!(
                    "refused a guest write to the start of a raw disk that would make it detect as {found:?} \
                     (name the format, --disk-format raw, to allow it)"
                );
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "write would change the detected format of a raw image",
                ))
            }
        }
    }

    /// Whether guest writes go to a temporary in-memory overlay instead of the file.
    pub fn has_overlay(&self) -> bool {
        self.overlay.is_some()
    }

    /// How many fdatasync calls the image has made (a flush with nothing written makes none).
    pub fn sync_count(&self) -> u64 {
        self.image.sync_count()
    }

    fn check_range(&self, offset: u64, len: usize) -> io::Result<()> {
        if offset.checked_add(len as u64).is_none_or(|e| e > self.len) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "access past the end of the disk"));
        }
        Ok(())
    }
}

impl BlockBackend for ImageBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.image.dev().read_at(buf, offset).map_err(io::Error::other)?;
        if let Some(ov) = &self.overlay {
            let mut p = 0usize;
            while p < buf.len() {
                let o = offset + p as u64;
                let (blk, bo) = (o / OVERLAY_BLOCK, (o % OVERLAY_BLOCK) as usize);
                let k = (OVERLAY_BLOCK as usize - bo).min(buf.len() - p);
                if let Some(b) = ov.get(&blk) {
                    buf[p..p + k].copy_from_slice(&b[bo..bo + k]);
                }
                p += k;
            }
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the disk is read-only"));
        }
        self.check_probe_guard(offset, buf)?;
        if self.overlay.is_none() {
            self.dirty = true;
            return self.image.dev().write_at(buf, offset).map_err(io::Error::other);
        }
        self.check_range(offset, buf.len())?;
        let mut p = 0usize;
        while p < buf.len() {
            let o = offset + p as u64;
            let (blk, bo) = (o / OVERLAY_BLOCK, (o % OVERLAY_BLOCK) as usize);
            let k = (OVERLAY_BLOCK as usize - bo).min(buf.len() - p);
            let have = self.overlay.as_ref().is_some_and(|ov| ov.contains_key(&blk));
            if !have {
                // Fill a new block from the image (the last block may be partial).
                let start = blk * OVERLAY_BLOCK;
                let n = (self.len - start).min(OVERLAY_BLOCK) as usize;
                let mut b = vec![0u8; OVERLAY_BLOCK as usize].into_boxed_slice();
                self.image.dev().read_at(&mut b[..n], start).map_err(io::Error::other)?;
                self.overlay.as_mut().expect("checked above").insert(blk, b);
            }
            let b = self.overlay.as_mut().expect("checked above").get_mut(&blk).expect("inserted above");
            b[bo..bo + k].copy_from_slice(&buf[p..p + k]);
            p += k;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Only what was written since the last flush needs syncing: a guest may send FLUSH CACHE
        // after every command. The overlay is never durable.
        if !std::mem::take(&mut self.dirty) {
            return Ok(());
        }
        self.image.dev().flush().map_err(|e| {
            self.dirty = true;
            io::Error::other(e)
        })
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("machine-disk-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn test_flush_syncs_only_after_writes() {
        let d = scratch("flush");
        let raw = d.join("d.raw");
        std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
        let vm = d.join("d.vmdk");
        vmdk::create(&vm, &vmdk::CreateOptions::new(vmdk::Subformat::MonolithicSparse, 1 << 20)).unwrap();
        let fl = d.join("f.vmdk");
        vmdk::create(&fl, &vmdk::CreateOptions::new(vmdk::Subformat::MonolithicFlat, 1 << 20)).unwrap();
        for p in [&raw, &vm, &fl] {
            let mut b = ImageBackend::open(p, false).unwrap();
            for _ in 0..100 {
                b.flush().unwrap();
            }
            assert_eq!(b.sync_count(), 0, "{}: flush with nothing written must not sync", p.display());
            b.write_at(4096, &[7; 512]).unwrap();
            b.flush().unwrap();
            let after_one = b.sync_count();
            assert!(after_one >= 1, "{}: a flush after a write must sync", p.display());
            for _ in 0..100 {
                b.flush().unwrap();
            }
            assert_eq!(b.sync_count(), after_one, "{}: repeated flushes must not sync again", p.display());
            let mut r = [0u8; 512];
            b.read_at(4096, &mut r).unwrap();
            assert_eq!(r, [7; 512]);
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn test_detected_raw_refuses_writes_that_change_its_format() {
        let d = scratch("guard");
        let raw = d.join("d.raw");
        std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
        // The start of a real VMDK, a descriptor file and a qcow2 header.
        let vm = d.join("h.vmdk");
        vmdk::create(&vm, &vmdk::CreateOptions::new(vmdk::Subformat::MonolithicSparse, 1 << 20)).unwrap();
        let vmdk_head = std::fs::read(&vm).unwrap()[..512].to_vec();
        let descriptor =
            b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\
            RW 2048 FLAT \"/etc/shadow\" 0\n"
                .to_vec();
        let qcow2 = b"QFI\xfb\0\0\0\x03".to_vec();
        let mut b = ImageBackend::open(&raw, false).unwrap();
        for (what, bytes, at) in [("vmdk", &vmdk_head, 0u64), ("descriptor", &descriptor, 0), ("qcow2", &qcow2, 0)] {
            let e = b.write_at(at, bytes).expect_err(what);
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{what}");
        }
        assert!(std::fs::read(&raw).unwrap().iter().all(|&x| x == 0), "a refused write changed the file");
        // An MBR, and image magic past the probed bytes, are ordinary data.
        let mut mbr = vec![0u8; 512];
        mbr[446] = 0x80;
        mbr[510..].copy_from_slice(&[0x55, 0xaa]);
        b.write_at(0, &mbr).unwrap();
        b.write_at(PROBE_LEN, &vmdk_head).unwrap();
        b.flush().unwrap();
        drop(b);
        let file = std::fs::read(&raw).unwrap();
        assert_eq!(&file[..512], &mbr[..]);
        assert_eq!(&file[4096..4608], &vmdk_head[..]);
        // Named raw, the guest may write anything.
        let mut b = ImageBackend::open_format(&raw, false, DiskFormat::Raw).unwrap();
        b.write_at(0, &vmdk_head).unwrap();
        b.flush().unwrap();
        assert_eq!(&std::fs::read(&raw).unwrap()[..512], &vmdk_head[..]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn test_snapshot_keeps_writes_in_memory_and_the_file_unchanged() {
        // What lockstep's machines get: each open starts from the file as it is, guest writes
        // are read back from memory, the file never changes.
        let d = scratch("snapshot");
        let raw = d.join("r.raw");
        let data: Vec<u8> = (0..(256u32 << 10)).map(|i| (i % 253) as u8).collect();
        std::fs::write(&raw, &data).unwrap();
        let mut a = ImageBackend::open_snapshot(&raw, false, DiskFormat::Raw).unwrap();
        assert!(a.has_overlay() && !a.read_only());
        a.write_at(4000, &[0xAB; 300]).unwrap();
        a.flush().unwrap();
        let mut r = vec![0u8; 8192];
        a.read_at(0, &mut r).unwrap();
        let mut want = data[..8192].to_vec();
        want[4000..4300].fill(0xAB);
        assert!(r == want);
        let b = ImageBackend::open_snapshot(&raw, false, DiskFormat::Raw).unwrap();
        b.read_at(0, &mut r).unwrap();
        assert!(r[..] == data[..8192], "a second open sees the file, not the first one's writes");
        drop(a);
        assert!(std::fs::read(&raw).unwrap() == data, "the file must not change");
        let mut c = ImageBackend::open_snapshot(&raw, true, DiskFormat::Raw).unwrap();
        assert!(c.read_only() && c.write_at(0, &[1]).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn test_stream_optimized_gets_a_memory_overlay() {
        let d = scratch("stream");
        let raw = d.join("s.raw");
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&raw, &data).unwrap();
        let so = d.join("s.vmdk");
        let src = vmdk::AnyImage::open(&raw, false).unwrap();
        let o = vmdk::CreateOptions::new(vmdk::Subformat::StreamOptimized, 0);
        vmdk::convert(&src, &so, &vmdk::Target::Vmdk(o), &|_| {}).unwrap();
        let before = std::fs::read(&so).unwrap();
        let mut b = ImageBackend::open(&so, false).unwrap();
        assert!(b.has_overlay());
        b.write_at(1000, &[0xEE; 5000]).unwrap();
        b.write_at((1 << 20) - 100, &[0xDD; 100]).unwrap();
        assert!(b.write_at((1 << 20) - 100, &[0xDD; 101]).is_err());
        b.flush().unwrap();
        let mut r = vec![0u8; 8192];
        b.read_at(0, &mut r).unwrap();
        let mut want = data[..8192].to_vec();
        want[1000..6000].fill(0xEE);
        assert!(r == want);
        let mut t = [0u8; 200];
        b.read_at((1 << 20) - 200, &mut t).unwrap();
        assert_eq!(&t[..100], &data[(1 << 20) - 200..(1 << 20) - 100]);
        assert_eq!(&t[100..], &[0xDD; 100][..]);
        drop(b);
        assert!(std::fs::read(&so).unwrap() == before, "the streamOptimized file must not change");
        let b = ImageBackend::open(&so, true).unwrap();
        assert!(!b.has_overlay() && b.read_only());
        let _ = std::fs::remove_dir_all(&d);
    }
}
