//! Guest programs for tests, benches and the demo, assembled in Rust with iced-x86's
//! `code_asm` (no external assembler).
//!
//! Every program is a flat image that a loader places at [`Rom::load_addr`] and starts in real
//! mode at [`Rom::entry`] (CS = 0), as a boot sector would be. The self-checking programs report
//! through QEMU's isa-debug-exit port ([`EXIT_PORT`]): [`PASS`] when every check held, otherwise
//! `FAIL | n` where `n` numbers the first check that failed. The expected values in the checks
//! are written from the Intel SDM's definitions of the instructions, not from the emulator.
//!
//! Memory the programs use (all below 1 MiB unless noted):
//!
//! | range | use |
//! |---|---|
//! | 0x0000–0x03FF | real-mode IVT |
//! | 0x0600–0x06FF | scratch variables of the checks |
//! | 0x1000–0x1FFF | protected/long-mode IDT |
//! | 0x3000–0x3FFF | string-instruction buffers |
//! | 0x7000 | real-mode stack top |
//! | 0x8000 | the image: 16-bit entry stage |
//! | 0x8400 | GDT and its pseudo-descriptor |
//! | 0x9000 | 32-bit stage |
//! | 0xA000 | the payload (16-, 32- or 64-bit) |
//! | 0x20000–0x22FFF | long-mode page tables (PML4, PDPT, PD: 1 GiB identity-mapped, 2 MiB pages) |
//! | 0x80000 | protected/long-mode stack top |
//! | 0x100000 | data of the demo (the prime sieve) |

mod boot;
mod checks;
mod demo;
mod fuzz;
mod layout;
mod system;

pub use boot::{boot_disk, boot_sector, BOOT_MESSAGE_DONE, BOOT_MESSAGE_INT10, BOOT_MESSAGE_SERIAL};
pub use checks::{
    apic, exceptions_protected, exceptions_real, fast_timer_halt, long_mode_switch, pit_interrupts, real_mode_arith,
    string_ops, FastTimer,
};
pub use demo::{demo, mandelbrot_reference, primes_reference, DEMO_BANNER};
pub use fuzz::{random_timer_guest, SplitMix};
pub use layout::{Mode, ENTRY, PAYLOAD};
pub use system::{system_long, system_protected};

/// QEMU isa-debug-exit port the self-checking programs report through.
pub const EXIT_PORT: u16 = 0xF4;
/// Value written to [`EXIT_PORT`] when every check held.
pub const PASS: u8 = 0x10;
/// Bit set in the value written to [`EXIT_PORT`] when check `n` failed (`FAIL | n`).
pub const FAIL: u8 = 0x80;
/// COM1, where the demo prints.
pub const COM1: u16 = 0x3F8;

/// A guest image and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rom {
    /// Bytes to copy into guest memory at `load_addr`.
    pub image: Vec<u8>,
    /// Physical load address.
    pub load_addr: u64,
    /// Real-mode entry point (CS = 0, IP = entry).
    pub entry: u64,
}
