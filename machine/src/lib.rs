//! The composition root: builds a PC from `cpu`, `mmu` and `devices`, implements
//! [`cpu::CpuBus`] by routing port I/O and MMIO to devices, and runs the guest.
//!
//! Only the CLI (and later the management API) depends on this crate.

pub mod loader;

use base::{AccessSize, GuestPhysAddr, PortAddr, VirtualInstant};
use cpu::state::{cr, rflags, seg_attr};
use cpu::{CpuBus, CpuState, ExecutionEngine, Interpreter, RunExit, Segment};
use devices::{Access, Bus, DebugCon, ExitDevice, NoIrq, PioDevice, Uart16550};
use mmu::{PhysMemory, PhysMemoryError};
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use thiserror::Error;

pub use loader::{KernelImage, LoadError};

/// Port of the Bochs/QEMU debug console.
pub const DEBUGCON_PORT: u16 = 0xE9;
/// Port SeaBIOS writes its debug log to (QEMU's `-debugcon` with iobase 0x402).
pub const FIRMWARE_LOG_PORT: u16 = 0x402;
/// Port of the QEMU isa-debug-exit device.
pub const EXIT_PORT: u16 = 0xF4;
/// Base port of COM1.
pub const COM1_PORT: u16 = 0x3F8;

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
    /// Device wiring failed (overlapping port ranges: a programming error).
    #[error("device wiring: {0}")]
    Wiring(String),
}

/// User configuration of a machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// Keep a copy of everything written to COM1 and the debug console ([`Machine::serial_output`]).
    pub capture_serial: bool,
    /// Also write the serial console and debug console to the host's standard output.
    pub serial_stdout: bool,
    /// Print each executed instruction to standard error.
    pub trace: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig { ram_bytes: 128 << 20, capture_serial: false, serial_stdout: false, trace: false }
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
    /// A triple fault (a real PC would reset).
    TripleFault,
}

/// Where console output goes: the host terminal, a capture buffer, or both.
#[derive(Debug, Clone)]
struct ConsoleSink {
    stdout: bool,
    capture: Option<Rc<RefCell<Vec<u8>>>>,
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.stdout {
            let mut o = std::io::stdout().lock();
            o.write_all(buf)?;
            o.flush()?;
        }
        if let Some(c) = &self.capture {
            c.borrow_mut().extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The port-mapped devices of the board.
#[derive(Debug)]
enum PortDev {
    DebugCon(DebugCon<ConsoleSink>),
    Exit(ExitDevice),
    Com1(Uart16550<NoIrq, ConsoleSink>),
}

impl PortDev {
    fn dev(&mut self) -> &mut dyn PioDevice {
        match self {
            PortDev::DebugCon(d) => d,
            PortDev::Exit(d) => d,
            PortDev::Com1(d) => d,
        }
    }
}

/// Everything the CPU reaches through [`CpuBus`].
#[derive(Debug)]
struct Board {
    mem: PhysMemory,
    ports: Bus<PortDev>,
    exit_value: Option<u32>,
    now: VirtualInstant,
}

impl Board {
    fn access(&self, addr: u64, offset: u64) -> Access {
        Access { offset, addr, now: self.now }
    }
}

impl CpuBus for Board {
    fn memory(&mut self) -> &mut PhysMemory {
        &mut self.mem
    }

    fn mmio_read(&mut self, id: u32, addr: GuestPhysAddr, size: AccessSize) -> u64 {
        log::debug!("MMIO read of unclaimed region {id} at {:#x} ({} bytes): open bus", addr.0, size.bytes());
        size.mask()
    }

    fn mmio_write(&mut self, id: u32, addr: GuestPhysAddr, size: AccessSize, value: u64) {
        log::debug!(
            "MMIO write of unclaimed region {id} at {:#x} ({} bytes) = {value:#x} dropped",
            addr.0,
            size.bytes()
        );
    }

    fn port_read(&mut self, port: PortAddr, size: AccessSize) -> u32 {
        let n = size.bytes();
        let now = self.now;
        match self.ports.lookup_mut(u64::from(port.0), n as u64) {
            Some((dev, offset)) => {
                let mut buf = [0u8; 4];
                dev.dev().read(Access { offset, addr: u64::from(port.0), now }, &mut buf[..n]);
                u32::from_le_bytes(buf)
            }
            None => {
                log::debug!("IN from unclaimed port {:#x} ({n} bytes): open bus", port.0);
                size.mask() as u32
            }
        }
    }

    fn port_write(&mut self, port: PortAddr, size: AccessSize, value: u32) {
        let n = size.bytes();
        let access = self.access(u64::from(port.0), 0);
        match self.ports.lookup_mut(u64::from(port.0), n as u64) {
            Some((dev, offset)) => {
                let d = dev.dev();
                d.write(Access { offset, ..access }, &value.to_le_bytes()[..n]);
                if let PortDev::Exit(e) = dev {
                    if let Some(v) = e.take_exit() {
                        self.exit_value = Some(v);
                    }
                }
            }
            None => log::debug!("OUT to unclaimed port {:#x} ({n} bytes) = {value:#x} dropped", port.0),
        }
    }

    fn interrupt_pending(&mut self) -> bool {
        false
    }

    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        None
    }

    fn stop_requested(&mut self) -> bool {
        self.exit_value.is_some()
    }
}

/// A virtual PC.
#[derive(Debug)]
pub struct Machine {
    cpu: Box<CpuState>,
    engine: Interpreter,
    board: Board,
    capture: Option<Rc<RefCell<Vec<u8>>>>,
    ram_bytes: u64,
}

/// End of conventional memory (the VGA window starts here).
const LOW_RAM_END: u64 = 0xA_0000;
/// Start of the option-ROM and BIOS shadow area.
const SHADOW_START: u64 = 0xC_0000;
/// Largest firmware image accepted.
const MAX_FIRMWARE: u64 = 4 << 20;

/// Instructions per run slice: the granularity at which devices get time.
const SLICE: u64 = 1 << 20;

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
        let sink = ConsoleSink { stdout: config.serial_stdout, capture: capture.clone() };
        let mut ports = Bus::new();
        let wire = |e: devices::BusError| MachineError::Wiring(e.to_string());
        ports.insert(u64::from(DEBUGCON_PORT), 1, PortDev::DebugCon(DebugCon::new(sink.clone()))).map_err(wire)?;
        ports.insert(u64::from(FIRMWARE_LOG_PORT), 1, PortDev::DebugCon(DebugCon::new(sink.clone()))).map_err(wire)?;
        ports.insert(u64::from(EXIT_PORT), 4, PortDev::Exit(ExitDevice::new())).map_err(wire)?;
        ports.insert(u64::from(COM1_PORT), 8, PortDev::Com1(Uart16550::new(NoIrq, sink))).map_err(wire)?;
        let mut engine = Interpreter::new();
        engine.trace = config.trace;
        Ok(Machine {
            cpu: Box::new(CpuState::new()),
            engine,
            board: Board { mem, ports, exit_value: None, now: VirtualInstant(0) },
            capture,
            ram_bytes: ram,
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
        if len == 0 || len % 0x1_0000 != 0 || len > MAX_FIRMWARE {
            return Err(MachineError::BadFirmware(len));
        }
        self.board.mem.map_rom((1u64 << 32) - len, image)?;
        let low = &image[image.len() - (image.len().min(0x2_0000))..];
        self.board.mem.load(GuestPhysAddr(0x10_0000 - low.len() as u64), low)?;
        *self.cpu = CpuState::new();
        self.engine.invalidate_phys(0, u64::MAX);
        self.engine.flush_for_mode_change(&mut self.cpu);
        Ok(())
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

    /// Runs until the guest exits, halts for good, faults fatally or reaches `max_insns`.
    pub fn run(&mut self, max_insns: Option<u64>) -> Exit {
        let limit = max_insns.map(|m| self.cpu.icount.saturating_add(m));
        loop {
            if let Some(v) = self.board.exit_value.take() {
                return Exit::ExitDevice(v);
            }
            let mut budget = SLICE;
            if let Some(l) = limit {
                if self.cpu.icount >= l {
                    return Exit::InstructionLimit;
                }
                budget = budget.min(l - self.cpu.icount);
            }
            self.board.now = VirtualInstant(self.cpu.icount);
            match self.engine.run(&mut self.cpu, &mut self.board, budget) {
                RunExit::BudgetExhausted | RunExit::Stopped => {}
                RunExit::TripleFault => return Exit::TripleFault,
                RunExit::Halted => {
                    // No interrupt sources are wired yet, so a halted CPU never wakes.
                    if self.board.exit_value.is_none() {
                        return Exit::Halted;
                    }
                }
            }
        }
    }

    /// Everything written to COM1 and the debug console so far (with `capture_serial`).
    pub fn serial_output(&self) -> Vec<u8> {
        self.capture.as_ref().map(|c| c.borrow().clone()).unwrap_or_default()
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
