//! The composition root: builds a PC from `cpu`, `mmu` and `devices`, implements
//! [`cpu::CpuBus`] by routing port I/O and MMIO to devices, and runs the guest.
//!
//! Only the CLI (and later the management API) depends on this crate.

pub mod acpi;
mod board;
pub mod disk;
pub mod linux;
pub mod loader;
mod serial_input;
pub mod snapshot;
pub use serial_input::{format_input_log, parse_input_log};
pub mod lockstep;

use base::{GuestPhysAddr, VirtualInstant};
use board::{Board, ConsoleSink};
use cpu::state::{cr, rflags, seg_attr};
use cpu::{CpuState, ExecutionEngine, Interpreter, RunExit, Segment};

/// Which execution engine runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// The interpreter.
    #[default]
    Interp,
    /// The binary translator (`jit` crate; the interpreter on hosts other than x86-64).
    Jit,
}

impl EngineKind {
    /// The engine named by `FERRO_ENGINE` (`jit` or `interp`), else the interpreter: lets every
    /// machine test run under either engine (`FERRO_ENGINE=jit cargo test -p machine`).
    pub fn from_env() -> Self {
        match std::env::var("FERRO_ENGINE").as_deref() {
            Ok("jit") => EngineKind::Jit,
            _ => EngineKind::Interp,
        }
    }
}
use mmu::{PhysMemory, PhysMemoryError};
use std::cell::RefCell;
use std::rc::Rc;
use thiserror::Error;

pub use loader::{KernelImage, LoadError};

pub use board::{COM1_PORT, DEBUGCON_PORT, EXIT_PORT, FIRMWARE_LOG_PORT};

/// Errors from building a machine or loading an image.
#[derive(Debug, Error)]
pub enum MachineError {
    /// Guest memory could not be set up.
    #[error("guest memory")]
    Memory(#[from] PhysMemoryError),
    /// A kernel image is malformed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A Linux kernel cannot be booted directly.
    #[error(transparent)]
    Linux(#[from] linux::LinuxError),
    /// The requested memory size is unusable.
    #[error("memory size {0} bytes is out of range (1 MiB to 3 GiB)")]
    BadMemorySize(u64),
    /// An image does not fit in guest RAM.
    #[error("image at {addr:#x}+{len:#x} does not fit in guest RAM ({ram:#x} bytes)")]
    ImageOutOfRange {
        /// Load address.
        addr: u64,
        /// Length.
        len: u64,
        /// RAM size.
        ram: u64,
    },
    /// An image overlaps the VGA window, which is not RAM.
    #[error(
        "image at {addr:#x}+{len:#x} overlaps the VGA window 0xa0000-0xbffff, which is not RAM; \
         load it below 0xa0000 or at 0xc0000 and above"
    )]
    OverlapsVgaWindow {
        /// Load address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// An empty image.
    #[error("the image is empty")]
    EmptyImage,
    /// An entry point that real mode cannot reach.
    #[error("entry point {0:#x} is above 1 MiB; flat images start in real mode")]
    BadEntry(u64),
    /// A firmware image of an unusable size.
    #[error("firmware image of {0} bytes: must be a non-zero multiple of 64 KiB, at most 4 MiB")]
    BadFirmware(u64),
    /// A disk image could not be opened or attached.
    #[error("disk {path}: {reason}")]
    Disk {
        /// The image path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// More disks than the IDE controller has places for.
    #[error("at most 4 IDE disks (primary/secondary, master/slave)")]
    TooManyDisks,
    /// A second virtio-blk disk.
    #[error("at most one virtio-blk disk")]
    TooManyVirtioDisks,
    /// Device wiring failed (overlapping port ranges: a programming error).
    #[error("device wiring: {0}")]
    Wiring(String),
}

/// User configuration of a machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// Keep a copy of everything written to COM1 and the debug console ([`Machine::serial_output`])
    /// and of the firmware log ([`Machine::firmware_log`]).
    pub capture_serial: bool,
    /// Also write the serial console and debug console to the host's standard output.
    pub serial_stdout: bool,
    /// Print each executed instruction to standard error.
    pub trace: bool,
    /// Copy the firmware log (port 0x402, where SeaBIOS writes its debug output) to standard error.
    pub firmware_log_stderr: bool,
    /// A guest reset (keyboard controller, port 0x92, triple fault) ends the run with
    /// [`Exit::Reset`] or [`Exit::TripleFault`] instead of rebooting (QEMU's `-no-reboot`).
    pub no_reboot: bool,
    /// Unix time the RTC shows when the guest starts. Host time is an input of the machine,
    /// never read inside a device; the CLI passes the host clock, tests a fixed value.
    pub rtc_unix_seconds: i64,
    /// The execution engine (default: [`EngineKind::from_env`]).
    pub engine: EngineKind,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            ram_bytes: 128 << 20,
            capture_serial: false,
            serial_stdout: false,
            trace: false,
            firmware_log_stderr: false,
            no_reboot: false,
            // 2026-01-01T00:00:00Z: a fixed, reproducible default.
            rtc_unix_seconds: 1_767_225_600,
            engine: EngineKind::from_env(),
        }
    }
}

/// Why [`Machine::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The guest wrote this value to the exit port (QEMU exits with status `(v << 1) | 1`).
    ExitDevice(u32),
    /// The guest halted with interrupts disabled: nothing can wake it (a clean power-off).
    Halted,
    /// The instruction limit was reached.
    InstructionLimit,
    /// A triple fault with `no_reboot`, or with nothing to reboot into (a `load_flat` image).
    TripleFault,
    /// The guest asked for a reset (keyboard controller, port 0x92, or the reset control register
    /// 0xCF9, which is the ACPI reset register) with `no_reboot`, or with nothing to reboot into
    /// (a `load_flat` image).
    Reset,
    /// The guest halted with interrupts enabled and nothing will ever interrupt it.
    IdleForever,
    /// The virtual-time limit of [`Machine::run_limited`] was reached.
    TimeLimit,
    /// The guest entered ACPI S5 (soft-off) through the PIIX4 PM control register.
    PowerOff,
}

/// The kind of kernel [`Machine::load_kernel`] booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// A bzImage entered at its 64-bit entry point.
    Linux64,
    /// A bzImage entered at its 32-bit entry point.
    Linux32,
    /// An ELF vmlinux entered through its PVH note.
    Pvh,
    /// A Multiboot v1 kernel.
    Multiboot,
}

/// What [`Machine::load_kernel`] booted, kept because a reset boots it again as QEMU's
/// `-kernel` does: the kernel overwrote its own image (decompressed over it, freed its init
/// sections), so the image, initrd and command line are loaded afresh. RAM is not cleared.
struct DirectBoot {
    kernel: Vec<u8>,
    initrd: Option<Vec<u8>>,
    append: String,
    name: String,
}

impl std::fmt::Debug for DirectBoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectBoot")
            .field("kernel_bytes", &self.kernel.len())
            .field("initrd_bytes", &self.initrd.as_ref().map(Vec::len))
            .field("append", &self.append)
            .field("name", &self.name)
            .finish()
    }
}

/// The state of a run loop driven a turn at a time ([`Machine::run_state`],
/// [`Machine::run_turn`]): its limits and what it knows about an idle CPU.
#[derive(Debug, Clone)]
pub struct RunState {
    limit: Option<u64>,
    time_limit: Option<u64>,
    idle_since: Option<VirtualInstant>,
    /// Consecutive firings per timer that woke nothing during this halt.
    idle_fires: [u8; board::TIMERS],
    /// The instruction count at the last halt seen.
    halt_icount: Option<u64>,
}

/// What one [`Machine::run_turn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// The run is over.
    pub exit: Option<Exit>,
    /// The engine ran: how its run ended and how many instructions it executed.
    pub ran: Option<(RunExit, u64)>,
}

/// A virtual PC.
#[derive(Debug)]
pub struct Machine {
    cpu: Box<CpuState>,
    engine: Box<dyn ExecutionEngine>,
    board: Board,
    capture: Option<Rc<RefCell<Vec<u8>>>>,
    fwlog_capture: Option<Rc<RefCell<Vec<u8>>>>,
    ram_bytes: u64,
    no_reboot: bool,
    /// The firmware image, kept to restore the BIOS shadow area on a reset.
    bios: Option<Vec<u8>>,
    /// The kernel of a direct boot, kept to load it again on a reset.
    direct_boot: Option<DirectBoot>,
    /// What caused the last reset ([`Machine::last_reset_cause`]).
    last_reset_cause: Option<&'static str>,
    /// Resets that rebooted.
    reboots: u64,
    /// How many times a halted CPU skipped virtual time ahead (host work spent idle).
    idle_skips: u64,
}

/// End of conventional memory (the VGA window starts here).
const LOW_RAM_END: u64 = 0xA_0000;
/// Start of the option-ROM and BIOS shadow area.
const SHADOW_START: u64 = 0xC_0000;
/// Longest Multiboot command line passed (with its terminating NUL).
const MULTIBOOT_CMDLINE_MAX: usize = 4096;
/// Largest firmware image accepted.
const MAX_FIRMWARE: u64 = 4 << 20;

/// Instructions per run slice at most: the granularity at which the run loop checks its limits.
const SLICE: u64 = 1 << 20;
/// A halted CPU with interrupts enabled whose timers fire this long (virtual nanoseconds) without
/// waking it is idle forever (every interrupt source masked).
const IDLE_FOREVER_NS: u64 = 3_600 * 1_000_000_000;

impl Machine {
    /// Builds a machine with RAM from physical 0 and the legacy devices wired.
    pub fn new(config: MachineConfig) -> Result<Self, MachineError> {
        if !(1 << 20..=3 << 30).contains(&config.ram_bytes) {
            return Err(MachineError::BadMemorySize(config.ram_bytes));
        }
        let ram = config.ram_bytes.div_ceil(mmu::PAGE_SIZE) * mmu::PAGE_SIZE;
        // The PC layout: low RAM, the VGA window (unclaimed), the option-ROM/BIOS shadow area
        // (RAM), extended RAM; room in the backing store for a firmware image of up to 4 MiB.
        let mut mem = PhysMemory::new(ram + MAX_FIRMWARE)?;
        mem.map_ram(0, LOW_RAM_END)?;
        mem.map_ram(SHADOW_START, 0x10_0000 - SHADOW_START)?;
        if ram > 0x10_0000 {
            mem.map_ram(0x10_0000, ram - 0x10_0000)?;
        }
        let capture = config.capture_serial.then(|| Rc::new(RefCell::new(Vec::new())));
        let fwlog_capture = config.capture_serial.then(|| Rc::new(RefCell::new(Vec::new())));
        let sink = ConsoleSink { stdout: config.serial_stdout, stderr: false, capture: capture.clone() };
        let fwlog_sink =
            ConsoleSink { stdout: false, stderr: config.firmware_log_stderr, capture: fwlog_capture.clone() };
        let board = Board::new(mem, sink, fwlog_sink, config.rtc_unix_seconds, ram)?;
        let engine: Box<dyn ExecutionEngine> = match config.engine {
            EngineKind::Interp => {
                let mut e = Interpreter::new();
                e.trace = config.trace;
                Box::new(e)
            }
            EngineKind::Jit => {
                let mut e = jit::Translator::new();
                e.trace = config.trace;
                Box::new(e)
            }
        };
        Ok(Machine {
            cpu: Box::new(CpuState::new()),
            engine,
            board,
            capture,
            fwlog_capture,
            ram_bytes: ram,
            no_reboot: config.no_reboot,
            bios: None,
            direct_boot: None,
            last_reset_cause: None,
            reboots: 0,
            idle_skips: 0,
        })
    }

    fn check_fits(&self, addr: u64, len: u64) -> Result<(), MachineError> {
        if addr.checked_add(len).is_none_or(|e| e > self.ram_bytes) {
            return Err(MachineError::ImageOutOfRange { addr, len, ram: self.ram_bytes });
        }
        if addr < SHADOW_START && addr + len > LOW_RAM_END {
            return Err(MachineError::OverlapsVgaWindow { addr, len });
        }
        Ok(())
    }

    /// Loads a flat binary at `load` and prepares the CPU to start in real mode at `entry`
    /// (CS = 0 and IP = entry below 64 KiB; otherwise CS = entry >> 4, IP = entry & 0xF).
    pub fn load_flat(&mut self, image: &[u8], load: u64, entry: u64) -> Result<(), MachineError> {
        if image.is_empty() {
            return Err(MachineError::EmptyImage);
        }
        self.check_fits(load, image.len() as u64)?;
        if entry >= 0x10_0000 {
            return Err(MachineError::BadEntry(entry));
        }
        self.board.mem.load(GuestPhysAddr(load), image)?;
        self.direct_boot = None;
        self.engine.invalidate_phys(load, image.len() as u64);
        let mut cpu = CpuState::new();
        let (cs, ip) = if entry < 0x1_0000 { (0, entry) } else { ((entry >> 4) as u16, entry & 0xF) };
        cpu.seg = [Segment::real(0); 6];
        cpu.seg[cpu::SegReg::Cs as usize] = Segment::real(cs);
        cpu.seg[cpu::SegReg::Cs as usize].attr |= seg_attr::CODE;
        cpu.rip = ip;
        cpu.gpr[2] = 0;
        *self.cpu = cpu;
        self.engine.flush_for_mode_change(&mut self.cpu);
        Ok(())
    }

    /// Loads a BIOS image (e.g. SeaBIOS `bios.bin`): mapped read-only just below 4 GiB, its
    /// last 128 KiB also copied to 0xE0000, and the CPU reset to F000:FFF0.
    pub fn load_bios(&mut self, image: &[u8]) -> Result<(), MachineError> {
        let len = image.len() as u64;
        if len == 0 || !len.is_multiple_of(0x1_0000) || len > MAX_FIRMWARE {
            return Err(MachineError::BadFirmware(len));
        }
        self.board.mem.map_rom((1u64 << 32) - len, image)?;
        self.bios = Some(image.to_vec());
        self.direct_boot = None;
        self.reset_cpu_to_firmware()
    }

    /// Copies the top of the firmware into the BIOS shadow area and puts the CPU at the reset
    /// vector (power-on and every reset).
    fn reset_cpu_to_firmware(&mut self) -> Result<(), MachineError> {
        if let Some(image) = &self.bios {
            let low = &image[image.len() - (image.len().min(0x2_0000))..];
            self.board.mem.load(GuestPhysAddr(0x10_0000 - low.len() as u64), low)?;
        }
        *self.cpu = CpuState::new();
        self.engine.invalidate_phys(0, u64::MAX);
        self.engine.flush_for_mode_change(&mut self.cpu);
        Ok(())
    }

    /// Attaches a block device as IDE disk `index` (0 primary master, 1 primary slave,
    /// 2 secondary master, 3 secondary slave).
    pub fn attach_disk(&mut self, index: usize, backend: Box<dyn devices::BlockBackend>) -> Result<(), MachineError> {
        if index >= 4 {
            return Err(MachineError::TooManyDisks);
        }
        self.board
            .attach_disk(index / 2, index % 2 == 1, backend)
            .map_err(|e| MachineError::Disk { path: format!("#{index}"), reason: e.to_string() })
    }

    /// Opens a disk image (any VMDK subformat or raw, detected) and attaches it as IDE disk
    /// `index`.
    pub fn attach_disk_file(
        &mut self,
        index: usize,
        path: &std::path::Path,
        read_only: bool,
    ) -> Result<(), MachineError> {
        self.attach_disk_file_as(index, path, read_only, disk::DiskFormat::Auto)
    }

    /// Opens a disk image (any VMDK subformat or raw, detected or as `format` says) and attaches
    /// it as IDE disk `index`.
    pub fn attach_disk_file_as(
        &mut self,
        index: usize,
        path: &std::path::Path,
        read_only: bool,
        format: disk::DiskFormat,
    ) -> Result<(), MachineError> {
        let disk_err = |reason: String| MachineError::Disk { path: path.display().to_string(), reason };
        let backend = disk::ImageBackend::open_format(path, read_only, format).map_err(|e| disk_err(e.to_string()))?;
        self.attach_disk(index, Box::new(backend)).map_err(|e| match e {
            MachineError::Disk { reason, .. } => disk_err(reason),
            other => other,
        })
    }

    /// Attaches a block device as the virtio-blk disk (PCI 00:03.0; one at most).
    pub fn attach_virtio_disk(&mut self, backend: Box<dyn devices::BlockBackend>) -> Result<(), MachineError> {
        self.board.attach_virtio_disk(backend)
    }

    /// Opens a disk image (any VMDK subformat or raw, detected) and attaches it as the
    /// virtio-blk disk.
    pub fn attach_virtio_disk_file(&mut self, path: &std::path::Path, read_only: bool) -> Result<(), MachineError> {
        self.attach_virtio_disk_file_as(path, read_only, disk::DiskFormat::Auto)
    }

    /// Opens a disk image (any VMDK subformat or raw, detected or as `format` says) and attaches
    /// it as the virtio-blk disk.
    pub fn attach_virtio_disk_file_as(
        &mut self,
        path: &std::path::Path,
        read_only: bool,
        format: disk::DiskFormat,
    ) -> Result<(), MachineError> {
        let backend = disk::ImageBackend::open_format(path, read_only, format)
            .map_err(|e| MachineError::Disk { path: path.display().to_string(), reason: e.to_string() })?;
        self.attach_virtio_disk(Box::new(backend))
    }

    /// A machine reset: chips to their power-on state, then the CPU to the firmware's reset
    /// vector, or, after a direct kernel boot, the kernel loaded and entered again. Returns
    /// false when there is nothing to reboot into (a flat image).
    fn reboot(&mut self) -> bool {
        if self.bios.is_none() && self.direct_boot.is_none() {
            return false;
        }
        log::info!("machine reset at instruction {}", self.cpu.icount);
        self.board.reset_chips();
        let icount = self.cpu.icount;
        let tsc = self.cpu.msr.tsc_offset;
        let restarted = if self.bios.is_some() {
            self.reset_cpu_to_firmware().map(drop)
        } else {
            let boot = self.direct_boot.take().expect("checked above");
            let r = self.boot_kernel(&boot.kernel, boot.initrd.as_deref(), &boot.append, &boot.name);
            self.direct_boot = Some(boot);
            r.map(drop)
        };
        if let Err(e) = restarted {
            log::error!("reboot failed: {e}");
            return false;
        }
        self.reboots += 1;
        // Virtual time runs on across a reset.
        self.cpu.icount = icount;
        self.cpu.msr.tsc_offset = tsc;
        true
    }

    /// The memory map reported to a directly booted kernel (E820 / PVH memmap).
    fn e820(&self) -> Vec<linux::E820> {
        vec![
            linux::E820 { addr: 0, size: 0x9_FC00, kind: 1 },
            linux::E820 { addr: 0x9_FC00, size: 0x400, kind: 2 },
            // The BIOS area: the ACPI tables of a direct boot live here (acpi::DIRECT_BOOT_*).
            linux::E820 { addr: 0xE_0000, size: 0x2_0000, kind: 2 },
            linux::E820 { addr: 0x10_0000, size: self.ram_bytes - 0x10_0000, kind: 1 },
        ]
    }

    /// Boots a kernel directly, as QEMU's `-kernel`: a Linux bzImage (64-bit entry when the
    /// kernel has one, else 32-bit), an ELF `vmlinux` with a PVH note, or a Multiboot v1 kernel
    /// (whose command line is `"<name> <append>"`, as QEMU passes it). Returns which it was.
    ///
    /// A guest reset (unless `no_reboot`) boots the same kernel, initrd and command line again.
    pub fn load_kernel(
        &mut self,
        file: &[u8],
        initrd: Option<&[u8]>,
        append: &str,
        name: &str,
    ) -> Result<KernelKind, MachineError> {
        let kind = self.boot_kernel(file, initrd, append, name)?;
        self.direct_boot = Some(DirectBoot {
            kernel: file.to_vec(),
            initrd: initrd.map(<[u8]>::to_vec),
            append: append.to_owned(),
            name: name.to_owned(),
        });
        Ok(kind)
    }

    /// [`Machine::load_kernel`] without remembering the kernel (power-on and every reset).
    fn boot_kernel(
        &mut self,
        file: &[u8],
        initrd: Option<&[u8]>,
        append: &str,
        name: &str,
    ) -> Result<KernelKind, MachineError> {
        let linux_kernel = linux::is_bzimage(file) || linux::pvh_entry(file).is_some();
        let rsdp = if linux_kernel {
            self.install_acpi(acpi::DIRECT_BOOT_TABLES, acpi::DIRECT_BOOT_RSDP)?;
            // What firmware does before it boots anything: the IDE channels decode.
            self.board.enable_ide_decode();
            Some(u64::from(acpi::DIRECT_BOOT_RSDP))
        } else {
            None
        };
        let plan = if linux::is_bzimage(file) {
            linux::plan_bzimage(file, initrd, append, &self.e820(), self.ram_bytes, rsdp)?
        } else if linux::pvh_entry(file).is_some() {
            linux::plan_pvh(file, initrd, append, &self.e820(), self.ram_bytes, rsdp)?
        } else if loader::parse_multiboot(file).is_ok() {
            if initrd.is_some() {
                return Err(MachineError::Linux(linux::LinuxError::UnknownFormat));
            }
            self.load_multiboot(file, &format!("{name} {append}"))?;
            return Ok(KernelKind::Multiboot);
        } else {
            return Err(linux::LinuxError::UnknownFormat.into());
        };
        for (addr, data) in &plan.writes {
            self.check_fits(*addr, data.len() as u64)?;
            self.board.mem.load(GuestPhysAddr(*addr), data)?;
        }
        for &(addr, len) in &plan.zeros {
            self.check_fits(addr, len)?;
            let zeros = vec![0u8; len as usize];
            self.board.mem.load(GuestPhysAddr(addr), &zeros)?;
        }
        self.engine.invalidate_phys(0, self.ram_bytes);
        let data =
            Segment { selector: linux::BOOT_DS, attr: 0x93 | seg_attr::DB | seg_attr::G, limit: u32::MAX, base: 0 };
        let mut cpu = CpuState::new();
        cpu.gpr = [0; 16];
        cpu.seg = [data; 6];
        cpu.gdtr = cpu::DescriptorTable { base: linux::BOOT_GDT, limit: 31 };
        cpu.set_rflags(rflags::FIXED1);
        let kind = match plan.entry {
            linux::EntryMode::Long64 { rip, rsi } => {
                cpu.cr0 = cr::CR0_PE | cr::CR0_ET | cr::CR0_PG;
                cpu.cr4 = cr::CR4_PAE;
                cpu.cr3 = linux::BOOT_PML4;
                cpu.efer = cr::EFER_LME | cr::EFER_LMA;
                cpu.seg[1] = Segment {
                    selector: linux::BOOT_CS,
                    attr: 0x9B | seg_attr::L | seg_attr::G,
                    limit: u32::MAX,
                    base: 0,
                };
                cpu.rip = rip;
                cpu.gpr[6] = rsi;
                KernelKind::Linux64
            }
            linux::EntryMode::Protected32 { eip, esi, ebx } => {
                cpu.cr0 = cr::CR0_PE | cr::CR0_ET;
                cpu.seg[1] = Segment {
                    selector: linux::BOOT_CS,
                    attr: 0x9B | seg_attr::DB | seg_attr::G,
                    limit: u32::MAX,
                    base: 0,
                };
                cpu.rip = u64::from(eip);
                cpu.gpr[6] = u64::from(esi);
                cpu.gpr[3] = u64::from(ebx);
                if ebx != 0 {
                    KernelKind::Pvh
                } else {
                    KernelKind::Linux32
                }
            }
        };
        *self.cpu = cpu;
        self.engine.flush_for_mode_change(&mut self.cpu);
        Ok(kind)
    }

    /// Loads a Multiboot v1 kernel and prepares the CPU as a Multiboot loader leaves it.
    ///
    /// `cmdline` is passed as it is; QEMU's `-kernel` passes `"<kernel path> <append>"`, and so
    /// does `ferrovisor run --multiboot`. The information structure, memory map and command line
    /// are placed where they overlap nothing the kernel occupies.
    pub fn load_multiboot(&mut self, file: &[u8], cmdline: &str) -> Result<(), MachineError> {
        let k = loader::parse_multiboot(file)?;
        for s in &k.segments {
            self.check_fits(s.addr, s.data.len() as u64 + s.zero_fill)?;
            self.board.mem.load(GuestPhysAddr(s.addr), &s.data)?;
            let zeros = vec![0u8; s.zero_fill as usize];
            self.board.mem.load(GuestPhysAddr(s.addr + s.data.len() as u64), &zeros)?;
        }
        // The Multiboot information, memory map and command line go in one area that overlaps
        // nothing the kernel occupies: the first page-aligned place after the kernel, or else
        // below it, in RAM and outside the VGA window (as QEMU places them after the image).
        let mut cmd = cmdline.as_bytes().to_vec();
        cmd.truncate(MULTIBOOT_CMDLINE_MAX - 1);
        cmd.push(0);
        let area_len = 0x1000 + cmd.len() as u64;
        let spans: Vec<(u64, u64)> =
            k.segments.iter().map(|s| (s.addr, s.addr + s.data.len() as u64 + s.zero_fill)).collect();
        let kernel_end = spans.iter().map(|s| s.1).max().unwrap_or(0);
        let free = |at: u64| {
            let end = at + area_len;
            at >= 0x1000
                && end <= self.ram_bytes
                && !(at < SHADOW_START && end > LOW_RAM_END)
                && spans.iter().all(|&(a, b)| end <= a || at >= b)
        };
        let candidates = [kernel_end.next_multiple_of(0x1000), 0x1000, 0x1_0000, 0x10_0000];
        let info = candidates
            .into_iter()
            .chain(spans.iter().map(|s| s.1.next_multiple_of(0x1000)))
            .find(|&at| free(at))
            .ok_or(MachineError::ImageOutOfRange { addr: kernel_end, len: area_len, ram: self.ram_bytes })?;
        let mmap_addr = info + 0x400;
        let cmd_addr = info + 0x1000;
        self.board.mem.load(GuestPhysAddr(cmd_addr), &cmd)?;
        let mut mmap = Vec::new();
        for (base, len, ty) in [(0u64, 0x9_FC00u64, 1u32), (0x10_0000, self.ram_bytes - 0x10_0000, 1)] {
            mmap.extend_from_slice(&20u32.to_le_bytes());
            mmap.extend_from_slice(&base.to_le_bytes());
            mmap.extend_from_slice(&len.to_le_bytes());
            mmap.extend_from_slice(&ty.to_le_bytes());
        }
        self.board.mem.load(GuestPhysAddr(mmap_addr), &mmap)?;
        let mut mbi = [0u8; 88];
        let flags: u32 = (1 << 0) | (1 << 2) | (1 << 6);
        mbi[0..4].copy_from_slice(&flags.to_le_bytes());
        mbi[4..8].copy_from_slice(&639u32.to_le_bytes());
        let upper = ((self.ram_bytes - 0x10_0000) / 1024).min(u64::from(u32::MAX)) as u32;
        mbi[8..12].copy_from_slice(&upper.to_le_bytes());
        mbi[16..20].copy_from_slice(&(cmd_addr as u32).to_le_bytes());
        mbi[44..48].copy_from_slice(&(mmap.len() as u32).to_le_bytes());
        mbi[48..52].copy_from_slice(&(mmap_addr as u32).to_le_bytes());
        self.board.mem.load(GuestPhysAddr(info), &mbi)?;
        self.engine.invalidate_phys(0, self.ram_bytes);

        let mut cpu = CpuState::new_flat32();
        cpu.gpr = [0; 16];
        cpu.gpr[0] = u64::from(loader::MULTIBOOT_BOOTLOADER_MAGIC);
        cpu.gpr[3] = info;
        cpu.rip = u64::from(k.entry);
        cpu.cr0 = cr::CR0_PE | cr::CR0_ET;
        cpu.set_rflags(rflags::FIXED1);
        *self.cpu = cpu;
        self.engine.flush_for_mode_change(&mut self.cpu);
        Ok(())
    }

    /// The current virtual time: retired instructions plus time skipped while halted.
    fn now(&self) -> VirtualInstant {
        VirtualInstant(self.cpu.icount.wrapping_add(self.board.idle_time))
    }

    /// Runs until the guest exits, halts for good, faults fatally or reaches `max_insns`.
    ///
    /// Devices are advanced by deadline: a run slice ends at the next timer deadline, and a CPU
    /// halted with interrupts enabled skips virtual time ahead to it instead of spinning.
    pub fn run(&mut self, max_insns: Option<u64>) -> Exit {
        self.run_limited(max_insns, None)
    }

    /// [`Machine::run`] with a second bound: `max_time_ns` nanoseconds of virtual time (executed
    /// instructions plus time skipped while halted), after which the run ends with
    /// [`Exit::TimeLimit`].
    ///
    /// A halted CPU costs O(1) host work per timer, not per timer period: a periodic timer
    /// (PIT channel 0, local APIC timer) whose last two firings left no interrupt deliverable
    /// is "quiet" for the rest of that halt. Two, because a square wave's falling edge wakes
    /// nothing even when its rising edge would; after a rising edge that woke nothing, later
    /// ones only set request bits that are already set (8259 IRR, I/O APIC remote IRR, local
    /// APIC IRR) while nothing runs that could unmask them. The skip then goes straight to the
    /// next deadline of a timer that may still wake the CPU, and the quiet timers catch up in
    /// one step (their `advance_to` handles any number of periods). The RTC is never quiet: its
    /// alarm can match at a later second, and it has at most one deadline per second (or none
    /// while its interrupt flag is set).
    pub fn run_limited(&mut self, max_insns: Option<u64>, max_time_ns: Option<u64>) -> Exit {
        let mut st = self.run_state(max_insns, max_time_ns);
        loop {
            if let Some(e) = self.run_turn(&mut st, None).exit {
                return e;
            }
        }
    }

    /// The state of a run loop ([`Machine::run_limited`]) over `max_insns` instructions and
    /// `max_time_ns` of virtual time from now, for driving it one turn at a time
    /// ([`Machine::run_turn`]).
    pub fn run_state(&self, max_insns: Option<u64>, max_time_ns: Option<u64>) -> RunState {
        RunState {
            limit: max_insns.map(|m| self.cpu.icount.saturating_add(m)),
            time_limit: max_time_ns.map(|t| self.now().0.saturating_add(t)),
            idle_since: None,
            idle_fires: [0; board::TIMERS],
            halt_icount: None,
        }
    }

    /// One turn of the run loop of [`Machine::run_limited`]: the device and limit checks, then
    /// at most one call of the engine's `run`, with its budget capped at `budget_cap` if given
    /// (lockstep makes the reference machine run exactly as many instructions as the other one
    /// ran in its turn), then what follows it (reboot, idle skip). Two identical machines
    /// driven turn by turn make identical calls on their boards.
    pub fn run_turn(&mut self, st: &mut RunState, budget_cap: Option<u64>) -> Turn {
        let mut turn = Turn { exit: None, ran: None };
        turn.exit = self.turn_inner(st, budget_cap, &mut turn.ran);
        turn
    }

    fn turn_inner(
        &mut self,
        st: &mut RunState,
        budget_cap: Option<u64>,
        ran: &mut Option<(RunExit, u64)>,
    ) -> Option<Exit> {
        let RunState { limit, time_limit, idle_since, idle_fires, halt_icount } = st;
        let (limit, time_limit) = (*limit, *time_limit);
        {
            if let Some(v) = self.board.exit_value.take() {
                return Some(Exit::ExitDevice(v));
            }
            if std::mem::take(&mut self.board.power_off) {
                return Some(Exit::PowerOff);
            }
            if std::mem::take(&mut self.board.code_written) {
                // Device DMA overwrote decoded code.
                self.engine.invalidate_phys(0, u64::MAX);
            }
            if self.board.reset_requested {
                self.board.reset_requested = false;
                self.last_reset_cause = self.board.reset_cause.take();
                if self.no_reboot || !self.reboot() {
                    return Some(Exit::Reset);
                }
            }
            let now = self.now();
            self.board.advance_timers(now);
            let mut budget = SLICE;
            if let Some(l) = limit {
                if self.cpu.icount >= l {
                    return Some(Exit::InstructionLimit);
                }
                budget = budget.min(l - self.cpu.icount);
            }
            if let Some(t) = time_limit {
                if now.0 >= t {
                    return Some(Exit::TimeLimit);
                }
                budget = budget.min(t - now.0);
            }
            if let Some(d) = self.board.next_deadline() {
                budget = budget.min(d.0.saturating_sub(now.0).max(1));
            }
            if let Some(c) = budget_cap {
                budget = budget.min(c.max(1));
            }
            let before = self.cpu.icount;
            let r = self.engine.run(&mut self.cpu, &mut self.board, budget);
            *ran = Some((r, self.cpu.icount.wrapping_sub(before)));
            match r {
                RunExit::BudgetExhausted | RunExit::Stopped => {}
                RunExit::TripleFault => {
                    self.last_reset_cause = Some("a triple fault");
                    if self.no_reboot || !self.reboot() {
                        return Some(Exit::TripleFault);
                    }
                }
                RunExit::Halted => {
                    if self.board.exit_value.is_some() || self.board.reset_requested || self.board.power_off {
                        return None;
                    }
                    if self.cpu.rflags() & rflags::IF == 0 {
                        return Some(Exit::Halted);
                    }
                    // The CPU ran since the last halt (in this engine run or an earlier one:
                    // a block-stepping engine returns before it halts): a new halt.
                    if *halt_icount != Some(self.cpu.icount) {
                        *halt_icount = Some(self.cpu.icount);
                        *idle_since = None;
                        *idle_fires = [0; board::TIMERS];
                    }
                    // Idle: skip virtual time to the next deadline of a timer that may still
                    // wake the CPU (the TSC moves too).
                    let now = self.now();
                    let deadlines = self.board.timer_deadlines();
                    if deadlines.iter().all(Option::is_none) {
                        return Some(Exit::IdleForever);
                    }
                    let since = *idle_since.get_or_insert(now);
                    let forever = since.0.saturating_add(IDLE_FOREVER_NS);
                    let waking = deadlines
                        .iter()
                        .zip(idle_fires.iter().zip(board::TIMER_QUIET_AFTER))
                        .filter(|(_, (&n, quiet_after))| n < *quiet_after)
                        .filter_map(|(d, _)| *d)
                        .min();
                    let mut target = waking.map_or(forever, |d| d.0.min(forever));
                    if let Some(t) = time_limit {
                        target = target.min(t);
                    }
                    let skip = target.saturating_sub(now.0).max(1);
                    self.idle_skips += 1;
                    self.board.idle_time = self.board.idle_time.wrapping_add(skip);
                    self.cpu.msr.tsc_offset = self.cpu.msr.tsc_offset.wrapping_add(skip);
                    let now = self.now();
                    self.board.advance_timers(now);
                    if self.board.irq_pending() {
                        return None;
                    }
                    if now.0 >= forever {
                        return Some(Exit::IdleForever);
                    }
                    for (n, d) in idle_fires.iter_mut().zip(deadlines) {
                        if d.is_some_and(|d| d <= now) {
                            *n = n.saturating_add(1);
                        }
                    }
                }
            }
        }
        None
    }

    /// Turns block stepping on or off in the engine (see
    /// [`cpu::ExecutionEngine::set_block_step`]); false if the engine has no such mode.
    pub fn set_block_step(&mut self, on: bool) -> bool {
        self.engine.set_block_step(on)
    }

    /// Starts or stops the dirty log of guest memory (see [`mmu::dirty`]), emptied either way;
    /// starting forces every write in the soft TLB back through the slow path once.
    pub fn set_dirty_log(&mut self, on: bool) {
        self.board.mem.dirty_log().set_on(on);
        self.cpu.tlb.protect_write_slots(&mmu::ProtectSlots::All);
    }

    /// Hands every backing page written since the last call (or since the log started) to `f`,
    /// empties the log and protects those pages' TLB write entries again.
    pub fn take_dirty_pages(&mut self, f: impl FnMut(u64)) {
        let slots = self.board.mem.dirty_log().take(f);
        self.cpu.tlb.protect_write_slots(&slots);
    }

    /// The CPU state, writable: for tests that plant a difference (lockstep) and debugging.
    #[doc(hidden)]
    pub fn cpu_mut(&mut self) -> &mut CpuState {
        &mut self.cpu
    }

    /// Everything written to COM1 and the debug console so far (with `capture_serial`).
    pub fn serial_output(&self) -> Vec<u8> {
        self.capture.as_ref().map(|c| c.borrow().clone()).unwrap_or_default()
    }

    /// The console output captured so far from byte `from` on: COM1 and the debug console,
    /// then the firmware log (with `capture_serial`), without copying what came before.
    pub fn console_from(&self, from: (usize, usize)) -> (Vec<u8>, Vec<u8>) {
        let tail = |c: &Option<Rc<RefCell<Vec<u8>>>>, f: usize| {
            c.as_ref().map(|c| c.borrow().get(f..).map(<[u8]>::to_vec).unwrap_or_default()).unwrap_or_default()
        };
        (tail(&self.capture, from.0), tail(&self.fwlog_capture, from.1))
    }

    /// Everything the firmware wrote to its log port 0x402 so far (with `capture_serial`).
    pub fn firmware_log(&self) -> Vec<u8> {
        self.fwlog_capture.as_ref().map(|c| c.borrow().clone()).unwrap_or_default()
    }

    /// Virtual time (nanoseconds): instructions retired plus time skipped while halted.
    pub fn virtual_time(&self) -> VirtualInstant {
        self.now()
    }

    /// How many times a halted CPU skipped virtual time ahead to a timer deadline: the host
    /// work an idle guest cost.
    pub fn idle_skips(&self) -> u64 {
        self.idle_skips
    }

    /// Instructions retired so far.
    pub fn instructions(&self) -> u64 {
        self.cpu.icount
    }

    /// The engine's name and statistics (`--stats`).
    pub fn engine_stats(&self) -> (&'static str, Option<String>) {
        (self.engine.name(), self.engine.stats_text())
    }

    /// What caused the last reset, rebooted or not: "a triple fault", or the register the guest
    /// wrote ("the keyboard controller (command 0xFE)", ...).
    pub fn last_reset_cause(&self) -> Option<&'static str> {
        self.last_reset_cause
    }

    /// How many times the machine rebooted (resets that did not end the run).
    pub fn reboots(&self) -> u64 {
        self.reboots
    }

    /// The sector data the IDE controller moved since the last reset, by path: bus-master DMA
    /// or PIO through the data port (`--stats`).
    pub fn ide_transfer_stats(&self) -> devices::IdeTransferStats {
        self.board.ide_transfer_stats()
    }

    /// The CPU state (for tests and debugging).
    pub fn cpu(&self) -> &CpuState {
        &self.cpu
    }

    /// Guest physical memory (for tests and loaders).
    pub fn memory(&mut self) -> &mut PhysMemory {
        &mut self.board.mem
    }
}
