//! Error type of the VMDK library.

use std::path::PathBuf;

/// Everything that can go wrong while opening, reading, writing or checking a VMDK image.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
#[non_exhaustive]
pub enum Error {
    /// I/O error on {path}: {cause}
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error. Shown in the message and deliberately not returned by
        /// `Error::source`, so that a printed error chain names it once.
        cause: std::io::Error,
    },
    /// {path}: not a VMDK image ({reason})
    NotVmdk {
        /// File involved.
        path: PathBuf,
        /// Why it was not recognised.
        reason: String,
    },
    /// {path}: unsupported format {format} (ferrovisor reads VMDK and raw images; `qemu-img convert -O vmdk` converts)
    UnsupportedFormat {
        /// File involved.
        path: PathBuf,
        /// The format found (qemu-img's name for it).
        format: &'static str,
    },
    /// {path}: invalid sparse extent header: {reason}
    BadHeader {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// {path}: unsupported: {reason}
    Unsupported {
        /// File involved.
        path: PathBuf,
        /// What is not supported.
        reason: String,
    },
    /// descriptor line {line}: {reason}
    BadDescriptor {
        /// 1-based line number (0 = whole descriptor).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// {path}: corrupt image: {reason}
    Corrupt {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// parent image {path} not found (parentFileNameHint "{hint}")
    ParentNotFound {
        /// Resolved path that was tried.
        path: PathBuf,
        /// The hint from the descriptor.
        hint: String,
    },
    /// {child}: cannot open its parent: {cause}
    Parent {
        /// The child image.
        child: PathBuf,
        /// Why the parent could not be opened (in the message, not in `Error::source`).
        cause: Box<Error>,
    },
    /// parent loop: {path} appears twice in the backing chain
    ParentLoop {
        /// The image seen twice.
        path: PathBuf,
    },
    /// backing chain deeper than {0} images
    ChainTooDeep(usize),
    /// CID mismatch: {child} expects parent CID {expected:08x} but {parent} has CID {found:08x} (the parent was modified after the child was created)
    CidMismatch {
        /// The child image.
        child: PathBuf,
        /// The parent image.
        parent: PathBuf,
        /// parentCID in the child.
        expected: u32,
        /// CID of the parent.
        found: u32,
    },
    /// image is open read-only
    ReadOnlyImage,
    /// write refused: sector {sector} lies in extent {extent} which is {access}
    ReadOnlyExtent {
        /// First refused sector.
        sector: u64,
        /// 0-based extent index.
        extent: usize,
        /// Access mode of the extent (RDONLY, NOACCESS or ZERO).
        access: String,
    },
    /// access refused: sector {sector} lies in NOACCESS extent {extent}
    NoAccess {
        /// First refused sector.
        sector: u64,
        /// 0-based extent index.
        extent: usize,
    },
    /// access out of range: offset {offset} length {len} beyond disk size {size}
    OutOfRange {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Disk size in bytes.
        size: u64,
    },
    /// streamOptimized extents are append-only and cannot be modified in place ({path})
    StreamReadOnly {
        /// File involved.
        path: PathBuf,
    },
    /// invalid argument: {0}
    InvalidArgument(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Helper: wrap an I/O error with its path.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |cause| Error::Io { path: path.to_path_buf(), cause }
}
