//! The `ferrovisor` command line.

mod disk;
mod qmp;
mod run;
mod serve;
mod size;
mod vm;

use clap::{Parser, Subcommand};

/// Ferrovisor: a pure-software x86 PC emulator (binary translation to x86-64 hosts, an interpreter
/// everywhere).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a guest (with no options: the embedded demo guest).
    Run(Box<run::RunArgs>),
    /// Disk image tools (VMDK and raw).
    Disk(disk::DiskArgs),
    /// The management daemon: a REST API running many VMs, each in its own process.
    Serve(serve::ServeArgs),
    /// Talk to the management daemon (list, create, start, stop, snapshot, ...).
    Vm(serve::VmArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    // Each command has its own error status: `run` keeps odd statuses for the guest's
    // isa-debug-exit values; `disk` follows qemu-img (1).
    let (result, error_status) = match cli.command {
        Command::Run(a) => (run::run(*a), run::status::ERROR),
        Command::Disk(a) => (disk::run(a), 1),
        Command::Serve(a) => (serve::serve(a), 1),
        Command::Vm(a) => (serve::vm(a), 1),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ferrovisor: {e:#}");
            std::process::exit(error_status);
        }
    }
}
