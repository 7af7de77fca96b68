//! Consistency check and safe repair (`ferrovisor disk check`).
//!
//! Found problems are sorted into corruptions (bad pointers, overlapping grains, GD/redundant GD
//! disagreement, short flat files) and leaks (allocated space nothing points to, or a table update
//! that was interrupted between the two copies). Exit codes follow `qemu-img check`: 0 clean,
//! 2 corruptions, 3 leaks only (1, an error that stopped the check, is the caller's).

use std::path::Path;

use crate::error::{io, Result};
use crate::header::SECTOR;
use crate::image::{ExtentData, Image, OpenOptions};

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Problems that make data wrong or unreadable.
    pub corruptions: Vec<String>,
    /// Wasted space or interrupted updates that lose no data.
    pub leaks: Vec<String>,
    /// What `--repair` changed.
    pub repaired: Vec<String>,
    /// Grains referenced by the tables.
    pub allocated_grains: u64,
}

impl CheckReport {
    /// Exit status as `qemu-img check`: 0 clean, 2 corruptions, 3 leaks only.
    pub fn exit_code(&self) -> i32 {
        if !self.corruptions.is_empty() {
            2
        } else if !self.leaks.is_empty() {
            3
        } else {
            0
        }
    }
}

fn check_once(path: &Path, repair: bool) -> Result<CheckReport> {
    let img = Image::open_with(path, OpenOptions { writable: repair, no_parent: true })?;
    let mut rep = CheckReport::default();
    let mut g = img.inner.lock().unwrap_or_else(|p| p.into_inner());
    for e in g.extents.iter_mut() {
        match &mut e.data {
            ExtentData::Sparse(s) => s.check(repair, &mut rep)?,
            ExtentData::Flat { file, path, offset } => {
                let need = (*offset + e.line.sectors) * SECTOR;
                let have = file.metadata().map_err(io(path))?.len();
                if have < need {
                    rep.corruptions.push(format!(
                        "{}: flat extent file has {have} bytes but the extent needs {need}",
                        path.display()
                    ));
                    if repair && e.line.access == crate::descriptor::Access::Rw {
                        file.set_len(need).map_err(io(path))?;
                        rep.repaired.push(format!("{}: extended to {need} bytes (zeros)", path.display()));
                    }
                }
            }
            ExtentData::Zero => {}
        }
    }
    Ok(rep)
}

/// Checks the image at `path` (its own files; the backing chain must open). With `repair`, fixes
/// what is safe (resynchronises the redundant tables from valid copies, truncates a leaked tail,
/// extends short flat files) and checks again.
pub fn check(path: &Path, repair: bool) -> Result<CheckReport> {
    // The chain must open (parent present, CIDs match, no loop).
    drop(Image::open(path)?);
    let first = check_once(path, repair)?;
    if !repair || first.repaired.is_empty() {
        return Ok(first);
    }
    let mut after = check_once(path, false)?;
    after.repaired = first.repaired;
    Ok(after)
}
