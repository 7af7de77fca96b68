//! `ferrovisor run`: boot a guest.

use anyhow::{bail, Context};
use clap::Args;
use machine::{Exit, Machine, MachineConfig};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `ferrovisor run`.
#[derive(Debug, Args)]
#[command(after_help = "\
With no image option, boots the embedded demo guest (real -> protected -> long mode, then an
ASCII Mandelbrot and a prime table on the serial console).

Exit status:
  0            the guest powered off (HLT with interrupts disabled)
  (v << 1) | 1 the guest wrote v to the exit port 0xF4 (QEMU's isa-debug-exit convention)
  1            an error (bad file, bad option)
  2            the guest triple-faulted (with --no-reboot, or with no firmware to reboot)
  3            the --max-insns limit was reached
  4            the guest halted with interrupts enabled and every interrupt source masked
  0            the guest asked for a reset (with --no-reboot, or with no firmware to reboot)

Examples:
  ferrovisor run                                    the demo guest
  ferrovisor run --bios bios.bin --disk disk.img    a PC: SeaBIOS boots the IDE disk
  ferrovisor run --flat boot.bin --load 0x7c00      a flat real-mode image")]
pub struct RunArgs {
    /// Load a flat binary image (started in real mode; see --load and --entry).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["multiboot", "bios"])]
    flat: Option<PathBuf>,
    /// Boot PC firmware (e.g. SeaBIOS's bios.bin), mapped below 4 GiB; the CPU starts at the
    /// reset vector. Without --disk the firmware finds nothing to boot.
    #[arg(long, value_name = "FILE", conflicts_with = "multiboot")]
    bios: Option<PathBuf>,
    /// A disk image for the IDE controller (VMDK of any subformat, or raw; detected). Repeat for
    /// up to four disks: primary master, primary slave, secondary master, secondary slave.
    #[arg(long, value_name = "FILE")]
    disk: Vec<PathBuf>,
    /// Open the disks read-only: guest writes fail with an ATA error instead of changing them.
    #[arg(long)]
    read_only: bool,
    /// A guest reset or triple fault ends the run with a message instead of rebooting.
    #[arg(long)]
    no_reboot: bool,
    /// Where COM1 and the debug console (port 0xE9) go: the terminal (stdio) or nowhere (none).
    #[arg(long, value_enum, value_name = "WHERE", default_value = "stdio")]
    serial: Serial,
    /// Copy the firmware's debug log (port 0x402, SeaBIOS's log) to standard error.
    #[arg(long)]
    firmware_log: bool,
    /// Physical load address of the --flat image.
    #[arg(long, value_name = "ADDR", value_parser = parse_u64, default_value = "0x7c00", requires = "flat")]
    load: u64,
    /// Entry point of the --flat image (default: the load address); below 64 KiB the CPU starts
    /// at 0000:ADDR, else at (ADDR>>4):(ADDR&15).
    #[arg(long, value_name = "ADDR", value_parser = parse_u64, requires = "flat")]
    entry: Option<u64>,
    /// Boot a Multiboot v1 kernel (ELF32 or a.out-kludge), as QEMU's -kernel does.
    #[arg(long, value_name = "ELF")]
    multiboot: Option<PathBuf>,
    /// Kernel command line passed to a --multiboot kernel.
    #[arg(long, value_name = "CMDLINE", default_value = "", requires = "multiboot")]
    append: String,
    /// Guest RAM size: a number of MiB, or with a K/M/G suffix (QEMU's -m).
    #[arg(short = 'm', long = "memory", value_name = "SIZE", value_parser = parse_size, default_value = "128")]
    memory: u64,
    /// Stop after this many guest instructions.
    #[arg(long, value_name = "N")]
    max_insns: Option<u64>,
    /// Print every executed instruction to standard error.
    #[arg(long)]
    trace: bool,
    /// Do not print the instruction count and MIPS summary at exit.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    mgmt: crate::vm::MgmtArgs,
}

/// Destinations of the serial console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Serial {
    /// The host's standard output.
    Stdio,
    /// Discarded.
    None,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let r = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else {
        t.parse()
    };
    r.map_err(|_| format!("'{s}' is not a number (use decimal or 0x hex)"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1 << 20),
    };
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a size (e.g. 128, 512M, 1G)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("size '{s}' is too large"))
}

/// Runs a guest; returns the process exit status.
pub fn run(a: RunArgs) -> anyhow::Result<i32> {
    // The host clock enters the guest here, once, as the RTC's starting time.
    let host_time =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let config = MachineConfig {
        ram_bytes: a.memory,
        capture_serial: false,
        serial_stdout: a.serial == Serial::Stdio,
        trace: a.trace,
        firmware_log_stderr: a.firmware_log,
        no_reboot: a.no_reboot,
        rtc_unix_seconds: host_time,
    };
    if a.disk.len() > 4 {
        bail!("at most 4 IDE disks");
    }
    let mut disks = crate::vm::Disks { read_only: a.read_only, ..Default::default() };
    for (i, path) in a.disk.iter().enumerate() {
        disks.paths[i] = Some(path.clone());
    }
    if let Some(file) = a.mgmt.snapshot_load.clone() {
        let (m, d) = crate::vm::restore(&file, config.clone(), &disks)?;
        return crate::qmp::run_vm(m, d, config, &a.mgmt, a.max_insns, a.quiet);
    }
    let mut m = Machine::new(config.clone())?;
    for (i, path) in a.disk.iter().enumerate() {
        m.attach_disk_file(i, path, a.read_only)?;
    }
    if let Some(path) = &a.bios {
        let image = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        m.load_bios(&image).with_context(|| format!("cannot load {}", path.display()))?;
    } else if let Some(path) = &a.flat {
        let image = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        m.load_flat(&image, a.load, a.entry.unwrap_or(a.load))
            .with_context(|| format!("cannot load {}", path.display()))?;
    } else if let Some(path) = &a.multiboot {
        let image = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        m.load_multiboot(&image, &a.append).with_context(|| format!("cannot load {}", path.display()))?;
    } else {
        let demo = test_roms::demo();
        m.load_flat(&demo.image, demo.load_addr, demo.entry)?;
    }
    if a.max_insns == Some(0) {
        bail!("--max-insns must be at least 1");
    }
    if a.mgmt.qmp.is_some() || a.mgmt.snapshot_save.is_some() || a.mgmt.state_out.is_some() || a.mgmt.paused {
        return crate::qmp::run_vm(m, disks, config, &a.mgmt, a.max_insns, a.quiet);
    }
    let start = Instant::now();
    let exit = m.run(a.max_insns);
    let secs = start.elapsed().as_secs_f64();
    let n = m.instructions();
    if !a.quiet {
        eprintln!("ferrovisor: {n} guest instructions in {:.3} s ({:.1} MIPS)", secs, n as f64 / secs.max(1e-9) / 1e6);
    }
    Ok(exit_status(exit))
}

/// The process exit status for a run's end (see `ferrovisor run --help`).
pub fn exit_status(exit: Exit) -> i32 {
    match exit {
        Exit::Halted => 0,
        Exit::ExitDevice(v) => ((v << 1) | 1) as i32,
        Exit::TripleFault => {
            eprintln!("ferrovisor: the guest triple-faulted (a real PC would reset)");
            2
        }
        Exit::InstructionLimit => {
            eprintln!("ferrovisor: stopped at the instruction limit");
            3
        }
        Exit::Reset => {
            eprintln!("ferrovisor: the guest requested a reset");
            0
        }
        Exit::IdleForever => {
            eprintln!("ferrovisor: the guest halted with every interrupt source masked; nothing can wake it");
            4
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cli_parse_numbers() {
        assert_eq!(parse_u64("0x7C00"), Ok(0x7C00));
        assert_eq!(parse_u64("4096"), Ok(4096));
        assert!(parse_u64("zz").is_err());
        assert_eq!(parse_size("128"), Ok(128 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("640k"), Ok(640 << 10));
        assert!(parse_size("lots").is_err());
    }
}
