//! Block storage as the disk controllers see it: [`BlockBackend`], plus an in-memory disk and a
//! raw image file backend.
//!
//! The machine adapts other image formats (VMDK) to this trait; devices never see a path.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A fixed-size, byte-addressed block device.
///
/// Reads and writes are positional and must be complete: a short transfer is an error
/// (`UnexpectedEof` past the end). Object safe and `Send`, so a controller can hold a
/// `Box<dyn BlockBackend>`.
pub trait BlockBackend: Send {
    /// Fills `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes completed writes durable.
    fn flush(&mut self) -> io::Result<()>;
    /// The size in bytes.
    fn len(&self) -> u64;
    /// Whether the device has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether writes are refused.
    fn read_only(&self) -> bool {
        false
    }
}

fn check_range(offset: u64, n: usize, len: u64) -> io::Result<()> {
    match offset.checked_add(n as u64) {
        Some(end) if end <= len => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("access of {n} bytes at {offset:#x} past the end ({len:#x})"),
        )),
    }
}

/// A disk held in memory (tests, scratch disks).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemBackend {
    data: Vec<u8>,
    read_only: bool,
    flushes: u64,
}

impl MemBackend {
    /// A disk with the given contents.
    pub fn new(data: Vec<u8>) -> Self {
        MemBackend { data, read_only: false, flushes: 0 }
    }

    /// A zero-filled disk of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        Self::new(vec![0; len])
    }

    /// Makes the disk refuse writes.
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// The contents.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// How many times [`BlockBackend::flush`] was called.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }
}

impl BlockBackend for MemBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(offset, buf.len(), self.len())?;
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only disk"));
        }
        check_range(offset, buf.len(), self.len())?;
        let o = offset as usize;
        self.data[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

/// A raw disk image file.
#[derive(Debug)]
pub struct RawFileBackend {
    file: File,
    len: u64,
    read_only: bool,
    /// Written since the last flush: a flush with nothing to write back makes no fdatasync.
    dirty: bool,
}

impl RawFileBackend {
    /// A backend over `file`, `read_only` if the file was opened without write access. The
    /// size is taken once from the file's metadata.
    pub fn new(file: File, read_only: bool) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(RawFileBackend { file, len, read_only, dirty: false })
    }
}

impl BlockBackend for RawFileBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(offset, buf.len(), self.len)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only disk"));
        }
        check_range(offset, buf.len(), self.len)?;
        self.dirty = true;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.read_only || !std::mem::take(&mut self.dirty) {
            return Ok(());
        }
        self.file.sync_data().inspect_err(|_| self.dirty = true)
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

    #[test]
    fn test_mem_backend_bounds() {
        let mut m = MemBackend::zeroed(1024);
        m.write_at(510, &[0x55, 0xAA]).unwrap();
        let mut b = [0u8; 2];
        m.read_at(510, &mut b).unwrap();
        assert_eq!(b, [0x55, 0xAA]);
        assert_eq!(m.read_at(1023, &mut b).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(m.write_at(u64::MAX, &b).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        m.flush().unwrap();
        assert_eq!(m.flushes(), 1);
        let mut ro = MemBackend::zeroed(512).with_read_only(true);
        assert!(ro.write_at(0, &b).is_err());
        let boxed: Box<dyn BlockBackend> = Box::new(m);
        assert_eq!(boxed.len(), 1024);
    }

    #[test]
    fn test_raw_file_backend_roundtrip() {
        let path = std::env::temp_dir().join(format!("devices-rawfile-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut b = RawFileBackend::new(f, false).unwrap();
        assert_eq!(b.len(), 4096);
        b.write_at(512, b"hello").unwrap();
        b.flush().unwrap();
        let mut buf = [0u8; 5];
        b.read_at(512, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(b.read_at(4094, &mut buf).is_err());
        drop(b);
        assert_eq!(&std::fs::read(&path).unwrap()[512..517], b"hello");
        std::fs::remove_file(&path).unwrap();
    }
}
