//! `ferrovisor run`: boot a guest.

use anyhow::{bail, Context};
use clap::Args;
use machine::{EngineKind, Exit, Machine, MachineConfig};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `ferrovisor run`.
#[derive(Debug, Args)]
#[command(after_help = "\
With no image option, boots the embedded demo guest (real -> protected -> long mode, then an
ASCII Mandelbrot and a prime table on the serial console).

Exit status (the guest's isa-debug-exit values are odd, Ferrovisor's own outcomes even):
  0             the guest powered off (HLT with interrupts disabled)
  (v << 1) | 1  the guest wrote v to the exit port 0xF4 (QEMU's isa-debug-exit convention)
  2             bad command line (usage error)
  4             error: a file could not be read or loaded, a disk could not be opened, ...
  6             the guest triple-faulted (with --no-reboot, or a --flat image: nothing to reboot)
  8             the guest asked for a reset (with --no-reboot, or a --flat image: nothing to reboot)
  10            the --max-insns or --max-time limit was reached
  12            the guest halted with interrupts enabled and nothing can ever wake it
  14            --engine lockstep found a divergence between the engines

Examples:
  ferrovisor run                                    the demo guest
  ferrovisor run --bios bios.bin --disk disk.img    a PC: SeaBIOS boots the IDE disk
  ferrovisor run --flat boot.bin --load 0x7c00      a flat real-mode image")]
#[group(id = "any_disk", args = ["disk", "virtio_disk"], multiple = true)]
pub struct RunArgs {
    /// Load a flat binary image (started in real mode; see --load and --entry).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kernel", "bios"])]
    flat: Option<PathBuf>,
    /// Boot PC firmware (e.g. SeaBIOS's bios.bin), mapped below 4 GiB; the CPU starts at the
    /// reset vector. Without --disk the firmware finds nothing to boot.
    #[arg(long, value_name = "FILE", conflicts_with = "kernel")]
    bios: Option<PathBuf>,
    /// A disk image for the IDE controller (VMDK of any subformat, or raw; detected). Repeat for
    /// up to four disks: primary master, primary slave, secondary master, secondary slave.
    #[arg(long, value_name = "FILE")]
    disk: Vec<PathBuf>,
    /// Open the disks read-only: guest writes fail with an ATA error instead of changing them.
    #[arg(long, requires = "any_disk")]
    read_only: bool,
    /// How to read the --disk and --virtio-disk files: `auto` detects a VMDK by its header or
    /// descriptor and takes anything else as raw; `raw` or `vmdk` say so. A raw image found by
    /// detection refuses guest writes that would make its start look like an image format (as
    /// QEMU does); `--disk-format raw` lifts that.
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "auto")]
    disk_format: DiskFormatArg,
    /// A disk image (VMDK or raw, detected) for the virtio-blk controller at PCI 00:03.0, as
    /// Linux's virtio_blk drives it (`/dev/vda`). Honours --read-only.
    #[arg(long, value_name = "FILE")]
    virtio_disk: Option<PathBuf>,
    /// Write the serial input the guest received (from standard input), with the virtual time
    /// of each chunk, to FILE when the run ends; --serial-replay FILE repeats the run exactly.
    #[arg(long, value_name = "FILE")]
    serial_record: Option<PathBuf>,
    /// Feed COM1 from a file written by --serial-record instead of standard input.
    #[arg(long, value_name = "FILE")]
    serial_replay: Option<PathBuf>,
    /// A guest reset or triple fault ends the run with a message instead of rebooting.
    #[arg(long)]
    no_reboot: bool,
    /// The time the RTC starts from: `now` (the host's clock, the default), seconds since the
    /// Unix epoch, or a UTC date `YYYY-MM-DD[THH:MM:SS]`. From there the RTC runs on virtual
    /// time, so a fixed base makes runs reproducible (as QEMU's `-rtc base=...,clock=vm`).
    #[arg(long, value_name = "TIME", value_parser = parse_rtc_base, default_value = "now")]
    rtc_base: RtcBase,
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
    /// Boot a kernel directly, as QEMU's -kernel does: a Linux bzImage (Linux x86 boot
    /// protocol, 64-bit entry), an ELF vmlinux with a PVH note, or a Multiboot v1 kernel (ELF32
    /// or a.out kludge; --multiboot is an alias).
    #[arg(long, value_name = "FILE", visible_alias = "multiboot")]
    kernel: Option<PathBuf>,
    /// An initial RAM disk for a --kernel (Linux bzImage or PVH vmlinux).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line for --kernel (a Multiboot kernel gets "<FILE> <CMDLINE>", as QEMU
    /// passes it).
    #[arg(long, value_name = "CMDLINE", default_value = "", requires = "kernel")]
    append: String,
    /// Guest RAM size, 1 MiB to 3 GiB: a number of MiB, or with a unit (K, M, G, T; KiB..TiB
    /// and KB..TB are the same binary units), as QEMU's -m.
    #[arg(short = 'm', long = "memory", value_name = "SIZE", value_parser = parse_size, default_value = "128")]
    memory: u64,
    /// Stop after this many guest instructions.
    #[arg(long, value_name = "N")]
    max_insns: Option<u64>,
    /// Stop after this many seconds of virtual time (executed instructions at 1 ns each, plus
    /// time the guest spent halted): a bound on any run, idle guests included.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    max_time: Option<u64>,
    /// Print every executed instruction to standard error.
    #[arg(long)]
    trace: bool,
    /// Do not print the instruction count and MIPS summary at exit.
    #[arg(short, long)]
    quiet: bool,
    /// The execution engine: the interpreter, the binary translator, or both in lockstep
    /// (two machines compared at every block boundary, CPU state and the memory written;
    /// stops at the first divergence, narrows it down to the first divergent instruction, even
    /// inside a translated block, and prints it, what differs, both states and the block's host
    /// code). Under lockstep, guest writes to disks are kept in memory, not written to the file.
    #[arg(long, value_enum, value_name = "ENGINE", default_value = "jit")]
    engine: Engine,
    /// Compare lockstep machines only once at least N instructions ran since the last
    /// comparison (0: at every block boundary).
    #[arg(long, value_name = "N", default_value = "0")]
    lockstep_slice: u64,
    /// Print the RTC base at the start (with it, `--rtc-base` repeats the run exactly) and
    /// engine statistics at exit (blocks translated, cache flushes, SMC invalidations, helper
    /// calls per 1000 guest instructions).
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    mgmt: crate::vm::MgmtArgs,
}

/// `--engine` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Engine {
    /// The interpreter.
    Interp,
    /// The binary translator.
    Jit,
    /// Both, compared in lockstep.
    Lockstep,
}

/// `--disk-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DiskFormatArg {
    /// Detect: VMDK by its header or descriptor, raw otherwise.
    Auto,
    /// Raw, whatever the file holds.
    Raw,
    /// VMDK (a sparse extent or a descriptor file).
    Vmdk,
}

impl From<DiskFormatArg> for machine::disk::DiskFormat {
    fn from(f: DiskFormatArg) -> Self {
        match f {
            DiskFormatArg::Auto => Self::Auto,
            DiskFormatArg::Raw => Self::Raw,
            DiskFormatArg::Vmdk => Self::Vmdk,
        }
    }
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

/// `--rtc-base` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RtcBase {
    /// The host's clock at start-up.
    Now,
    /// Seconds since the Unix epoch.
    At(i64),
}

fn parse_rtc_base(s: &str) -> Result<RtcBase, String> {
    let bad = || format!("{s:?} is not `now`, seconds since 1970 or a date YYYY-MM-DD[THH:MM:SS]");
    if s == "now" {
        return Ok(RtcBase::Now);
    }
    if let Ok(n) = s.parse::<i64>() {
        return Ok(RtcBase::At(n));
    }
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, "00:00:00"));
    let num = |t: &str| t.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || t.len() != 3 || d[0].len() != 4 {
        return Err(bad());
    }
    let (y, m, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (hh, mm, ss) = (num(t[0])?, num(t[1])?, num(t[2])?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || day < 1 || day > month_days[(m - 1) as usize] || hh > 23 || mm > 59 || ss > 59 {
        return Err(bad());
    }
    // Days from 1970-01-01 to the civil date (proleptic Gregorian).
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(RtcBase::At(days * 86_400 + hh * 3600 + mm * 60 + ss))
}

fn parse_size(s: &str) -> Result<u64, String> {
    crate::size::parse_size(s, 1 << 20)
}

/// Seconds, fractional allowed, as whole nanoseconds.
fn parse_seconds(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix('s').unwrap_or(t);
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1.0e9 => Ok((v * 1e9).round().max(1.0) as u64),
        _ => Err(format!("'{s}' is not a positive number of seconds")),
    }
}

/// Exit statuses of `ferrovisor run` that are Ferrovisor's own outcomes (all even, so they
/// never collide with a guest's isa-debug-exit value `(v << 1) | 1`).
pub mod status {
    /// The guest powered off.
    pub const POWER_OFF: i32 = 0;
    /// An error: a file could not be read or loaded, a disk could not be opened.
    pub const ERROR: i32 = 4;
    /// The guest triple-faulted.
    pub const TRIPLE_FAULT: i32 = 6;
    /// The guest asked for a reset.
    pub const RESET: i32 = 8;
    /// The instruction or virtual-time limit was reached.
    pub const LIMIT: i32 = 10;
    /// The guest halted and nothing can wake it.
    pub const IDLE_FOREVER: i32 = 12;
    /// `--engine lockstep` found a divergence between the engines.
    pub const DIVERGENCE: i32 = 14;
}

/// A disk of a lockstep machine: the image file opened read-only, the guest's writes (unless
/// `read_only`) kept in memory per machine and discarded at exit. Lockstep builds two machines
/// and, to narrow a divergence down, builds them again and re-runs them from the start: each
/// must see the disk as it was when the run began, which a shared writable file would not give
/// (one machine's, or one run's, writes would reach the others).
fn lockstep_disk(
    path: &std::path::Path,
    read_only: bool,
    format: machine::disk::DiskFormat,
) -> anyhow::Result<machine::disk::ImageBackend> {
    machine::disk::ImageBackend::open_snapshot(path, read_only, format)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Standard input as COM1's live source. The thread only enqueues; the machine takes the input
/// at run-slice boundaries and stamps it with virtual time (the terminal stays in its usual line
/// mode).
fn stdin_serial_source() -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        while let Ok(n @ 1..) = stdin.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs a guest; returns the process exit status.
pub fn run(a: RunArgs) -> anyhow::Result<i32> {
    // The host clock enters the guest here, once, as the RTC's starting time (unless
    // --rtc-base fixes it).
    let host_time = match a.rtc_base {
        RtcBase::At(t) => t,
        RtcBase::Now => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
        }
    };
    if a.max_insns == Some(0) {
        bail!("--max-insns must be at least 1");
    }
    let stdout = a.serial == Serial::Stdio;
    let kind = if a.engine == Engine::Jit { EngineKind::Jit } else { EngineKind::Interp };
    let make_config = |engine: EngineKind, serial_stdout: bool| MachineConfig {
        ram_bytes: a.memory,
        capture_serial: a.engine == Engine::Lockstep,
        serial_stdout,
        trace: a.trace,
        firmware_log_stderr: a.firmware_log && serial_stdout,
        no_reboot: a.no_reboot,
        rtc_unix_seconds: host_time,
        engine,
    };
    if a.disk.len() > 4 {
        bail!("at most 4 IDE disks");
    }
    let mut disks = crate::vm::Disks { read_only: a.read_only, ..Default::default() };
    for (i, path) in a.disk.iter().enumerate() {
        disks.paths[i] = Some(path.clone());
    }
    if let Some(file) = a.mgmt.snapshot_load.clone() {
        let config = make_config(kind, stdout);
        let (mut m, d) = crate::vm::restore(&file, config.clone(), &disks)?;
        if stdout {
            m.connect_serial_input(stdin_serial_source());
        }
        return crate::qmp::run_vm(m, d, config, &a.mgmt, a.max_insns, a.quiet);
    }
    let booted_image = a.bios.is_some() || a.flat.is_some() || a.kernel.is_some();
    if !a.disk.is_empty() && !booted_image {
        bail!("--disk needs a guest that uses it: add --bios FILE (firmware that boots the disk), --flat or --kernel");
    }
    if !a.disk.is_empty() && a.bios.is_none() && a.kernel.is_none() {
        eprintln!(
            "ferrovisor: warning: --disk without --bios: no firmware boots the disk; the guest reaches it only \
             through the IDE ports"
        );
    }
    // Builds a machine with the guest loaded (lockstep builds two, and rebuilds them to narrow
    // a divergence down: their disks keep the guest's writes in memory, see `lockstep_disk`).
    let lockstep = a.engine == Engine::Lockstep;
    let build = |engine: EngineKind, serial_stdout: bool| -> anyhow::Result<Machine> {
        let mut m = Machine::new(make_config(engine, serial_stdout))?;
        for (i, path) in a.disk.iter().enumerate() {
            if lockstep {
                m.attach_disk(i, Box::new(lockstep_disk(path, a.read_only, a.disk_format.into())?))?;
            } else {
                m.attach_disk_file_as(i, path, a.read_only, a.disk_format.into())?;
            }
        }
        if let Some(path) = &a.virtio_disk {
            if lockstep {
                m.attach_virtio_disk(Box::new(lockstep_disk(path, a.read_only, a.disk_format.into())?))?;
            } else {
                m.attach_virtio_disk_file_as(path, a.read_only, a.disk_format.into())?;
            }
        }
        if let Some(path) = &a.bios {
            let image = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            m.load_bios(&image).with_context(|| format!("cannot load {}", path.display()))?;
        } else if let Some(path) = &a.flat {
            let image = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            m.load_flat(&image, a.load, a.entry.unwrap_or(a.load))
                .with_context(|| format!("cannot load {}", path.display()))?;
        } else if let Some(path) = &a.kernel {
            let image = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let initrd = match &a.initrd {
                Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
                None => None,
            };
            m.load_kernel(&image, initrd.as_deref(), &a.append, &path.display().to_string())
                .with_context(|| format!("cannot load {}", path.display()))?;
        } else {
            let demo = test_roms::demo();
            m.load_flat(&demo.image, demo.load_addr, demo.entry)?;
        }
        Ok(m)
    };
    if a.stats {
        // First, so that even a run that dies can be repeated (the guest's path depends on it).
        eprintln!("ferrovisor: rtc base: {host_time} (--rtc-base {host_time} repeats this run)");
    }
    let start = Instant::now();
    let (exit, n) = match a.engine {
        Engine::Interp | Engine::Jit => {
            let mut m = build(kind, stdout)?;
            if let Some(path) = &a.serial_replay {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                let log = machine::parse_input_log(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                for (t, bytes) in log {
                    m.queue_serial_input(t, &bytes);
                }
            } else if stdout {
                m.connect_serial_input(stdin_serial_source());
            }
            if a.mgmt.qmp.is_some() || a.mgmt.snapshot_save.is_some() || a.mgmt.state_out.is_some() || a.mgmt.paused {
                return crate::qmp::run_vm(m, disks, make_config(kind, stdout), &a.mgmt, a.max_insns, a.quiet);
            }
            let exit = m.run_limited(a.max_insns, a.max_time);
            if let Some(path) = &a.serial_record {
                std::fs::write(path, machine::format_input_log(m.serial_input_log()))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if a.stats {
                let (name, text) = m.engine_stats();
                print_stats(name, text.as_deref(), m.instructions());
                let ide = m.ide_transfer_stats();
                eprintln!(
                    "ferrovisor: ide: bus-master DMA read {} bytes, written {} bytes; PIO data read {} bytes, \
                     written {} bytes",
                    ide.dma_read_bytes, ide.dma_write_bytes, ide.pio_read_bytes, ide.pio_write_bytes
                );
                eprintln!("ferrovisor: reboots: {}", m.reboots());
            }
            let secs = start.elapsed().as_secs_f64();
            let n = m.instructions();
            if !a.quiet {
                eprintln!(
                    "ferrovisor: {n} guest instructions in {secs:.3} s ({:.1} MIPS)",
                    n as f64 / secs.max(1e-9) / 1e6
                );
            }
            return Ok(exit_status_because(exit, m.last_reset_cause(), a.no_reboot));
        }
        Engine::Lockstep => {
            // Both machines capture their console; the interpreter's copy is printed.
            let build_quiet = |e: EngineKind| build(e, false);
            let mut progress = |n: u64, c: u64| {
                if !a.quiet {
                    let secs = start.elapsed().as_secs_f64().max(1e-9);
                    eprintln!(
                        "ferrovisor: lockstep: {n} instructions, {c} comparisons in {secs:.0} s ({:.1} MIPS)",
                        n as f64 / secs / 1e6
                    );
                }
            };
            let opts = machine::lockstep::LockstepOptions {
                max_insns: a.max_insns,
                slice: a.lockstep_slice,
                progress: Some(&mut progress),
                ..Default::default()
            };
            let r = machine::lockstep::run_lockstep_with(&build_quiet, opts)?;
            match r {
                Ok(rep) => {
                    if stdout {
                        use std::io::Write;
                        let mut o = std::io::stdout();
                        o.write_all(&rep.serial)?;
                        o.flush()?;
                    }
                    let secs = start.elapsed().as_secs_f64().max(1e-9);
                    eprintln!(
                        "ferrovisor: lockstep: 0 divergences in {} comparisons ({:.0}/s; {} blocks or \
                         interpreted instructions, {} pages compared)",
                        rep.comparisons,
                        rep.comparisons as f64 / secs,
                        rep.turns,
                        rep.pages_compared
                    );
                    (rep.exit, rep.instructions)
                }
                Err(d) => {
                    eprintln!("ferrovisor: lockstep: {d}");
                    return Ok(status::DIVERGENCE);
                }
            }
        }
    };
    let secs = start.elapsed().as_secs_f64();
    if !a.quiet {
        eprintln!("ferrovisor: {n} guest instructions in {:.3} s ({:.1} MIPS)", secs, n as f64 / secs.max(1e-9) / 1e6);
    }
    Ok(exit_status(exit))
}

/// [`exit_status`], with a reset's message naming what the guest did (`cause`, from
/// [`Machine::last_reset_cause`]) and why the run ends instead of rebooting.
fn exit_status_because(exit: Exit, cause: Option<&str>, no_reboot: bool) -> i32 {
    let why = if no_reboot { "--no-reboot ends the run" } else { "a --flat image has nothing to reboot into" };
    match (exit, cause) {
        (Exit::TripleFault, _) => {
            eprintln!("ferrovisor: the guest triple-faulted; {why}");
            status::TRIPLE_FAULT
        }
        (Exit::Reset, Some(cause)) => {
            eprintln!("ferrovisor: the guest requested a reset through {cause}; {why}");
            status::RESET
        }
        _ => exit_status(exit),
    }
}

/// The process exit status for a run's end (see `ferrovisor run --help`).
pub fn exit_status(exit: Exit) -> i32 {
    match exit {
        Exit::Halted | Exit::PowerOff => status::POWER_OFF,
        Exit::ExitDevice(v) => ((v << 1) | 1) as i32,
        Exit::TripleFault => {
            eprintln!("ferrovisor: the guest triple-faulted (a real PC would reset)");
            status::TRIPLE_FAULT
        }
        Exit::InstructionLimit => {
            eprintln!("ferrovisor: stopped at the instruction limit");
            status::LIMIT
        }
        Exit::TimeLimit => {
            eprintln!("ferrovisor: stopped at the virtual-time limit");
            status::LIMIT
        }
        Exit::Reset => {
            eprintln!("ferrovisor: the guest requested a reset");
            status::RESET
        }
        Exit::IdleForever => {
            eprintln!("ferrovisor: the guest halted with every interrupt source masked; nothing can wake it");
            status::IDLE_FOREVER
        }
    }
}

/// Prints `--stats`: the engine's counters, and helper calls per 1000 guest instructions.
fn print_stats(name: &str, text: Option<&str>, instructions: u64) {
    eprintln!("ferrovisor: engine {name}");
    for line in text.unwrap_or("").lines() {
        eprintln!("ferrovisor:   {line}");
        if let Some(v) = line.strip_prefix("helper calls: ").and_then(|v| v.parse::<u64>().ok()) {
            let per = v as f64 * 1000.0 / instructions.max(1) as f64;
            eprintln!("ferrovisor:   helper calls per 1000 guest instructions: {per:.1}");
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
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_seconds("1.5"), Ok(1_500_000_000));
        assert_eq!(parse_seconds("2s"), Ok(2_000_000_000));
        assert!(parse_seconds("-1").is_err());
    }
}
