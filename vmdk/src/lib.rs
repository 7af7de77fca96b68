//! VMDK disk images: every hosted subformat (monolithicSparse, monolithicFlat, twoGbMaxExtentSparse,
//! twoGbMaxExtentFlat, streamOptimized), delta links, and a thread-safe block API.
//!
//! ```no_run
//! use vmdk::{create, CreateOptions, Image, Subformat};
//! let p = std::path::Path::new("disk.vmdk");
//! create(p, &CreateOptions::new(Subformat::MonolithicSparse, 1 << 30)).unwrap();
//! let img = Image::open_rw(p).unwrap();
//! img.write_at(b"hello", 4096).unwrap();
//! img.flush().unwrap();
//! ```
//!
//! Every size read from a file is bounded (against the file length or a fixed limit) before
//! anything is allocated from it; malformed files give an [`Error`], never a panic.

pub mod check;
pub mod descriptor;
pub mod error;
pub mod header;
pub mod image;
pub mod ops;
mod sparse;
pub mod stream;

pub use check::{check, CheckReport};
pub use descriptor::{Access, Descriptor, ExtentKind, ExtentLine};
pub use error::{Error, Result};
pub use image::{BlockDevice, ExtentInfo, Image, MapKind, MapRange, OpenOptions, Probe, RawImage};
pub use ops::{
    commit, compare, compare_images, compare_ranges, convert, create, snapshot, AnyImage, CreateOptions, Subformat,
    Target,
};
pub use sparse::Grain;
