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
    /// Facts worth knowing that are not errors (e.g. an embedded descriptor naming another file,
    /// as a copied image does; the image is still the file itself).
    pub notes: Vec<String>,
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
    for d in &g.disagreements {
        rep.corruptions.push(format!("{}: {d}", path.display()));
    }
    for n in &g.notes {
        rep.notes.push(format!("{}: {n}", path.display()));
    }
    if g.single_file {
        let own = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(named) = g.desc.extents.first().and_then(|e| e.file.clone()) {
            if named != own {
                rep.notes.push(format!(
                    "{}: the embedded descriptor names {named:?} (a copied or renamed image); the image is this file",
                    path.display()
                ));
            }
        }
    }
    if repair && !g.disagreements.is_empty() {
        // The headers win: rewrite the descriptor's extent lines from what was opened.
        let mut d = g.desc.clone();
        if g.single_file {
            d.extents = vec![g.extents[0].line.clone()];
            if let Some(named) = g.desc.extents.first().and_then(|e| e.file.clone()) {
                d.extents[0].file = Some(named); // keep the name; it is not what is opened
            }
        } else {
            for (dl, e) in d.extents.iter_mut().zip(&g.extents) {
                dl.sectors = e.line.sectors;
            }
        }
        crate::image::write_descriptor(path, &d)?;
        g.desc = d;
        rep.repaired.push(format!("{}: descriptor extent lines rewritten from the sparse headers", path.display()));
    }
    for e in g.extents.iter_mut() {
        match &mut e.data {
            ExtentData::Sparse(s) => s.check(repair, &mut rep)?,
            ExtentData::Flat { file, path, offset, .. } => {
                // The descriptor is the authority for a flat extent (its bytes are the guest's, who
                // may write anything), so this is reported, not refused at open.
                let mut head = [0u8; 512];
                let k = crate::sparse::read_full(file, &mut head, 0).map_err(io(path))?;
                let head = &head[..k];
                if head.starts_with(&crate::header::MAGIC.to_le_bytes()) || head.starts_with(b"COWD") {
                    rep.corruptions.push(format!(
                        "{}: a {} extent names a file that starts with a VMDK sparse header: its metadata is read as disk data (wrong type or file name in the descriptor?)",
                        path.display(),
                        e.line.kind.as_str()
                    ));
                }
                let need = (*offset + e.line.sectors) * SECTOR;
                let have = file.metadata().map_err(io(path))?.len();
                if have < need {
                    // Not repaired: only the descriptor says the file should be longer, and a
                    // mistyped offset or size there would turn into gigabytes of invented zeros
                    // behind a clean report.
                    rep.corruptions.push(format!(
                        "{}: flat extent file has {have} bytes but the extent needs {need} (offset {} + {} sectors); \
                         check the extent line in the descriptor (not repaired: nothing but the descriptor says the \
                         file should be longer)",
                        path.display(),
                        offset,
                        e.line.sectors
                    ));
                }
            }
            ExtentData::Zero => {}
        }
    }
    Ok(rep)
}

/// Checks the image at `path` (its own files; the backing chain must open). With `repair`, fixes
/// what is safe (resynchronises the redundant tables from valid copies, truncates a leaked tail,
/// rewrites descriptor extent lines that disagree with the sparse headers) and checks again.
/// Repair never makes a file longer.
pub fn check(path: &Path, repair: bool) -> Result<CheckReport> {
    // The chain must open (parent present, CIDs match, no loop).
    drop(Image::open(path)?);
    let first = check_once(path, repair)?;
    if !repair || first.repaired.is_empty() {
        return Ok(first);
    }
    let mut after = check_once(path, false)?;
    after.repaired = first.repaired;
    after.notes = first.notes;
    Ok(after)
}
