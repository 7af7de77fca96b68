//! The management side of `ferrovisor run`: snapshot save and load (with VMDK disk deltas),
//! the state dump tests compare, and the options that turn them on.

use anyhow::{bail, Context};
use base::Persist;
use clap::Args;
use machine::snapshot::{self, DiskSnapshot, MachineState, RestoreArgs};
use machine::{Machine, MachineConfig};
use std::path::{Path, PathBuf};

/// Management options of `ferrovisor run`.
#[derive(Debug, Args, Clone, Default)]
pub struct MgmtArgs {
    /// Start from a snapshot file instead of booting (the image options are then ignored; the
    /// disks come from the snapshot, each on a new VMDK delta of its frozen image, unless --disk
    /// names them).
    #[arg(long, value_name = "FILE")]
    pub snapshot_load: Option<PathBuf>,
    /// When the run stops (e.g. at --max-insns), save a snapshot to FILE. VMDK disks are frozen
    /// and the VM's disks become new deltas on top of them.
    #[arg(long, value_name = "FILE")]
    pub snapshot_save: Option<PathBuf>,
    /// When the run stops, write the machine state (CPU, chips, a RAM checksum) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub state_out: Option<PathBuf>,
    /// Serve QMP (QEMU Machine Protocol): `unix:PATH,server,wait=off` or `tcp:127.0.0.1:PORT`.
    #[arg(long, value_name = "SPEC")]
    pub qmp: Option<String>,
    /// The VM's name (QMP query-name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Where QMP snapshot-save puts snapshot files (TAG.fvsnap); default: the current directory.
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// Start paused (QEMU's -S): the guest runs after QMP `cont`.
    #[arg(short = 'S', long)]
    pub paused: bool,
}

/// The disks a VM runs on: the image each IDE slot currently uses (the top of its chain).
#[derive(Debug, Clone, Default)]
pub struct Disks {
    /// By IDE index.
    pub paths: [Option<PathBuf>; 4],
    /// Opened read-only.
    pub read_only: bool,
}

/// A file name next to `p`, `STEM.TAG.vmdk`, with a counter if that exists.
fn delta_name(p: &Path, tag: &str) -> PathBuf {
    let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "disk".into());
    let dir = p.parent().unwrap_or(Path::new("."));
    let safe: String =
        tag.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let mut n = 0;
    loop {
        let name = if n == 0 { format!("{stem}.{safe}.vmdk") } else { format!("{stem}.{safe}-{n}.vmdk") };
        let c = dir.join(name);
        if !c.exists() {
            return c;
        }
        n += 1;
    }
}

/// Saves the machine to `file`: the state at this instant, then every disk frozen with the VM
/// moved onto a new delta (VMware's model).
pub fn save(m: &mut Machine, disks: &mut Disks, file: &Path, tag: &str) -> anyhow::Result<MachineState> {
    let start = std::time::Instant::now();
    let mut state = m.save();
    for (index, slot) in disks.paths.iter_mut().enumerate() {
        let Some(current) = slot.clone() else { continue };
        if disks.read_only {
            // A read-only disk never changes: it is its own frozen image.
            state.disks.push(DiskSnapshot { index, frozen: current });
            continue;
        }
        let child = delta_name(&current, tag);
        m.snapshot_disk(index, &current, &child)
            .with_context(|| format!("snapshot of disk {} (is it a VMDK image?)", current.display()))?;
        state.disks.push(DiskSnapshot { index, frozen: current });
        *slot = Some(child);
    }
    snapshot::write_file(file, &state).with_context(|| format!("cannot write snapshot {}", file.display()))?;
    log::info!("snapshot {} saved in {:.3} s", file.display(), start.elapsed().as_secs_f64());
    Ok(state)
}

/// Rebuilds a machine from a snapshot file. Disks named on the command line are used as they
/// are; otherwise each frozen disk of the snapshot gets a new delta for the restored VM.
pub fn restore(file: &Path, host: MachineConfig, cli: &Disks) -> anyhow::Result<(Machine, Disks)> {
    let start = std::time::Instant::now();
    let state = snapshot::read_file(file).with_context(|| format!("cannot load snapshot {}", file.display()))?;
    let r = restore_state(&state, host, cli, file)?;
    log::info!("snapshot {} restored in {:.3} s", file.display(), start.elapsed().as_secs_f64());
    Ok(r)
}

/// [`restore`] from a decoded state.
pub fn restore_state(
    state: &MachineState,
    host: MachineConfig,
    cli: &Disks,
    file: &Path,
) -> anyhow::Result<(Machine, Disks)> {
    let mut disks = Disks { read_only: cli.read_only, ..Default::default() };
    if cli.paths.iter().any(Option::is_some) {
        disks.paths = cli.paths.clone();
    } else {
        let tag = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        for d in &state.disks {
            if d.index >= 4 {
                bail!("snapshot names IDE disk {}, at most 4 exist", d.index);
            }
            if cli.read_only {
                disks.paths[d.index] = Some(d.frozen.clone());
                continue;
            }
            let child = delta_name(&d.frozen, &format!("{tag}-restore"));
            vmdk::snapshot(&d.frozen, &child, vmdk::Subformat::MonolithicSparse, false)
                .with_context(|| format!("cannot create a delta of the frozen disk {}", d.frozen.display()))?;
            disks.paths[d.index] = Some(child);
        }
    }
    let mut backends = Vec::new();
    for (i, p) in disks.paths.iter().enumerate() {
        if let Some(p) = p {
            let b = machine::disk::ImageBackend::open(p, disks.read_only)
                .with_context(|| format!("cannot open disk {}", p.display()))?;
            backends.push((i, Box::new(b) as Box<dyn snapshot::BlockBackend>));
        }
    }
    let m = Machine::restore(RestoreArgs { host, disks: backends }, state)
        .with_context(|| format!("cannot restore snapshot {}", file.display()))?;
    Ok((m, disks))
}

/// Writes the state dump (`--state-out`): CPU, chips, RAM checksum, console output so far.
pub fn write_state(m: &Machine, path: &Path) -> anyhow::Result<()> {
    let v = m.state_json();
    std::fs::write(path, serde_json::to_vec_pretty(&v)?).with_context(|| format!("cannot write {}", path.display()))
}
