//! Writes the Multiboot benchmark guest to a file and prints the checksum it must print.
//!
//! `cargo run --release -p test-roms --example bench_guest -- OUT [SCALE]`, then
//! `ferrovisor run --multiboot OUT` or `qemu-system-i386 -kernel OUT -serial stdio
//! -device isa-debug-exit,iobase=0xf4,iosize=4 -display none`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(out) = args.get(1) else {
        eprintln!("usage: bench_guest OUT [SCALE]");
        std::process::exit(2);
    };
    let scale = match args.get(2).map(|s| s.parse::<u32>()) {
        None => 1,
        Some(Ok(s)) if s >= 1 => s,
        Some(_) => {
            eprintln!("SCALE must be a positive integer");
            std::process::exit(2);
        }
    };
    if let Err(e) = std::fs::write(out, test_roms::bench_guest(scale)) {
        eprintln!("cannot write {out}: {e}");
        std::process::exit(1);
    }
    println!("{:08x}", test_roms::bench_reference(scale));
}
