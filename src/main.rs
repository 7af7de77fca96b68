//! The `ferrovisor` command line.

mod disk;
mod qmp;
mod run;
mod serve;
mod vm;

use clap::{Parser, Subcommand};

/// Ferrovisor: a pure-software x86 PC emulator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a guest (with no options: the embedded demo guest).
    Run(run::RunArgs),
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
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Disk(a) => disk::run(a),
        Command::Serve(a) => serve::serve(a),
        Command::Vm(a) => serve::vm(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ferrovisor: {e:#}");
            std::process::exit(1);
        }
    }
}
