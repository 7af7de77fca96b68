//! The composition root: builds a PC from `cpu`, `mmu` and `devices`, implements
//! [`cpu::CpuBus`] by routing port I/O and MMIO to devices, and runs the guest.
//!
//! Only the CLI (and later the management API) depends on this crate.

mod board;
pub mod disk;
pub mod loader;
pub mod snapshot;

use base::{GuestPhysAddr, VirtualInstant};
use board::{Board, ConsoleSink};
use cpu::state::{cr, rflags, seg_attr};
use cpu::{CpuState, ExecutionEngine, Interpreter, RunExit, Segment};
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
    #[error("guest memory: {0}")]
    Memory(#[from] PhysMemoryError),
    /// A kernel image is malformed.
    #[error(transparent)]
    Load(#[from] LoadError),
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
    /// A triple fault with `no_reboot`, or with no firmware to reboot into.
    TripleFault,
    /// The guest asked for a reset (keyboard controller or port 0x92) with `no_reboot`, or with no
    /// firmware to reboot into.
    Reset,
    /// The guest halted with interrupts enabled and nothing will ever interrupt it.
    IdleForever,
}

/// A virtual PC.
#[derive(Debug)]
pub struct Machine {
    cpu: Box<CpuState>,
    engine: Interpreter,
    board: Board,
    capture: Option<Rc<RefCell<Vec<u8>>>>,
    fwlog_capture: Option<Rc<RefCell<Vec<u8>>>>,
    ram_bytes: u64,
    no_reboot: bool,
    /// The firmware image, kept to restore the BIOS shadow area on a reset.
    bios: Option<Vec<u8>>,
}

/// End of conventional memory (the VGA window starts here).
const LOW_RAM_END: u64 = 0xA_0000;
/// Start of the option-ROM and BIOS shadow area.
const SHADOW_START: u64 = 0xC_0000;
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
        let mut engine = Interpreter::new();
        engine.trace = config.trace;
        Ok(Machine {
            cpu: Box::new(CpuState::new()),
            engine,
            board,
            capture,
            fwlog_capture,
            ram_bytes: ram,
            no_reboot: config.no_reboot,
            bios: None,
        })
    }

    fn check_fits(&self, addr: u64, len: u64) -> Result<(), MachineError> {
        if addr.checked_add(len).is_none_or(|e| e > self.ram_bytes) {
            return Err(MachineError::ImageOutOfRange { addr, len, ram: self.ram_bytes });
        }
        Ok(())
    }

    /// Loads a flat binary at `load` and prepares the CPU to start in real mode at `entry`
    /// (CS = 0 and IP = entry below 64 KiB; otherwise CS = entry >> 4, IP = entry & 0xF).
    pub fn load_flat(&mut self, image: &[u8], load: u64, entry: u64) -> Result<(), MachineError> {
        self.check_fits(load, image.len() as u64)?;
        if entry >= 0x10_0000 {
            return Err(MachineError::BadEntry(entry));
        }
        self.board.mem.load(GuestPhysAddr(load), image)?;
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
        let disk_err = |reason: String| MachineError::Disk { path: path.display().to_string(), reason };
        let backend = disk::ImageBackend::open(path, read_only).map_err(|e| disk_err(e.to_string()))?;
        self.attach_disk(index, Box::new(backend)).map_err(|e| match e {
            MachineError::Disk { reason, .. } => disk_err(reason),
            other => other,
        })
    }

    /// A machine reset: chips to their power-on state, the CPU to the reset vector. Returns
    /// false when there is no firmware to reboot into.
    fn reboot(&mut self) -> bool {
        if self.bios.is_none() {
            return false;
        }
        log::info!("machine reset at instruction {}", self.cpu.icount);
        self.board.reset_chips();
        let icount = self.cpu.icount;
        let tsc = self.cpu.msr.tsc_offset;
        if self.reset_cpu_to_firmware().is_err() {
            return false;
        }
        // Virtual time runs on across a reset.
        self.cpu.icount = icount;
        self.cpu.msr.tsc_offset = tsc;
        true
    }
    /// Loads a Multiboot v1 kernel and prepares the CPU as a Multiboot loader leaves it.
    pub fn load_multiboot(&mut self, file: &[u8], cmdline: &str) -> Result<(), MachineError> {
        let k = loader::parse_multiboot(file)?;
        for s in &k.segments {
            self.check_fits(s.addr, s.data.len() as u64 + s.zero_fill)?;
            self.board.mem.load(GuestPhysAddr(s.addr), &s.data)?;
            let zeros = vec![0u8; s.zero_fill as usize];
            self.board.mem.load(GuestPhysAddr(s.addr + s.data.len() as u64), &zeros)?;
        }
        // Multiboot information at 0x9000, command line at 0x9800, memory map at 0x9400.
        let info = 0x9000u64;
        let mmap_addr = 0x9400u64;
        let cmd_addr = 0x9800u64;
        let mut cmd = cmdline.as_bytes().to_vec();
        cmd.truncate(0x7FF);
        cmd.push(0);
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
        let limit = max_insns.map(|m| self.cpu.icount.saturating_add(m));
        let mut idle_since: Option<VirtualInstant> = None;
        loop {
            if let Some(v) = self.board.exit_value.take() {
                return Exit::ExitDevice(v);
            }
            if self.board.reset_requested {
                self.board.reset_requested = false;
                if self.no_reboot || !self.reboot() {
                    return Exit::Reset;
                }
            }
            let now = self.now();
            self.board.advance_timers(now);
            let mut budget = SLICE;
            if let Some(l) = limit {
                if self.cpu.icount >= l {
                    return Exit::InstructionLimit;
                }
                budget = budget.min(l - self.cpu.icount);
            }
            if let Some(d) = self.board.next_deadline() {
                budget = budget.min(d.0.saturating_sub(now.0).max(1));
            }
            let before = self.cpu.icount;
            match self.engine.run(&mut self.cpu, &mut self.board, budget) {
                RunExit::BudgetExhausted | RunExit::Stopped => {}
                RunExit::TripleFault => {
                    if self.no_reboot || !self.reboot() {
                        return Exit::TripleFault;
                    }
                }
                RunExit::Halted => {
                    if self.board.exit_value.is_some() || self.board.reset_requested {
                        continue;
                    }
                    if self.cpu.rflags() & rflags::IF == 0 {
                        return Exit::Halted;
                    }
                    // Idle: skip virtual time to the next timer deadline (the TSC moves too).
                    let now = self.now();
                    let Some(deadline) = self.board.next_deadline() else {
                        return Exit::IdleForever;
                    };
                    if self.cpu.icount != before {
                        idle_since = None;
                    }
                    let since = *idle_since.get_or_insert(now);
                    if now.0.saturating_sub(since.0) > IDLE_FOREVER_NS {
                        return Exit::IdleForever;
                    }
                    let skip = deadline.0.saturating_sub(now.0).max(1);
                    self.board.idle_time = self.board.idle_time.wrapping_add(skip);
                    self.cpu.msr.tsc_offset = self.cpu.msr.tsc_offset.wrapping_add(skip);
                }
            }
        }
    }

    /// Everything written to COM1 and the debug console so far (with `capture_serial`).
    pub fn serial_output(&self) -> Vec<u8> {
        self.capture.as_ref().map(|c| c.borrow().clone()).unwrap_or_default()
    }

    /// Everything the firmware wrote to its log port 0x402 so far (with `capture_serial`).
    pub fn firmware_log(&self) -> Vec<u8> {
        self.fwlog_capture.as_ref().map(|c| c.borrow().clone()).unwrap_or_default()
    }

    /// Virtual time (nanoseconds): instructions retired plus time skipped while halted.
    pub fn virtual_time(&self) -> VirtualInstant {
        self.now()
    }

    /// Instructions retired so far.
    pub fn instructions(&self) -> u64 {
        self.cpu.icount
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
