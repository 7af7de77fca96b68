//! Writes a test ROM to a file, for running it under `ferrovisor run --flat` (with --trace).
//!
//! `cargo run -p test-roms --example dump -- NAME OUT` prints the --load and --entry to use.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(name), Some(out)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: dump NAME OUT   (NAME: demo, real_mode_arith, long_mode_switch, string_ops, exceptions_real, exceptions_protected, pit_interrupts, system_protected, system_long)");
        std::process::exit(2);
    };
    let rom = match name.as_str() {
        "demo" => test_roms::demo(),
        "real_mode_arith" => test_roms::real_mode_arith(),
        "long_mode_switch" => test_roms::long_mode_switch(),
        "string_ops" => test_roms::string_ops(),
        "exceptions_real" => test_roms::exceptions_real(),
        "exceptions_protected" => test_roms::exceptions_protected(),
        "pit_interrupts" => test_roms::pit_interrupts(),
        "system_protected" => test_roms::system_protected(),
        "system_long" => test_roms::system_long(),
        other => {
            eprintln!("unknown ROM {other}");
            std::process::exit(2);
        }
    };
    if let Err(e) = std::fs::write(out, &rom.image) {
        eprintln!("cannot write {out}: {e}");
        std::process::exit(1);
    }
    println!("ferrovisor run --flat {out} --load {:#x} --entry {:#x}", rom.load_addr, rom.entry);
}
