//! Disk images for the IDE controller: any format the `vmdk` crate opens (every VMDK
//! subformat, delta chains, raw), adapted to [`devices::BlockBackend`].

use devices::BlockBackend;
use std::io;
use std::path::Path;

/// A disk image opened through the `vmdk` crate.
pub struct ImageBackend {
    image: vmdk::AnyImage,
    len: u64,
    read_only: bool,
}

impl std::fmt::Debug for ImageBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageBackend").field("len", &self.len).field("read_only", &self.read_only).finish()
    }
}

impl ImageBackend {
    /// Opens `path`, detecting VMDK (sparse extent or descriptor) or raw.
    pub fn open(path: &Path, read_only: bool) -> vmdk::Result<Self> {
        let image = vmdk::AnyImage::open(path, !read_only)?;
        let len = image.dev().len();
        Ok(ImageBackend { image, len, read_only })
    }
}

impl BlockBackend for ImageBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.image.dev().read_at(buf, offset).map_err(io::Error::other)
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the disk is read-only"));
        }
        self.image.dev().write_at(buf, offset).map_err(io::Error::other)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.image.dev().flush().map_err(io::Error::other)
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}
