//! `ferrovisor disk`: VMDK and raw image tools (owned by the VMDK work).

use clap::Args;

/// Arguments of `ferrovisor disk`.
#[derive(Debug, Args)]
pub struct DiskArgs {}

/// Runs a disk subcommand; returns the process exit status.
pub fn run(_args: DiskArgs) -> anyhow::Result<i32> {
    anyhow::bail!("ferrovisor disk is not implemented yet")
}
