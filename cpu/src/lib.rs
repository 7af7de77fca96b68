//! The x86 CPU: architectural state ([`CpuState`]), the seam to the rest of the machine
//! ([`CpuBus`]), the engine interface shared with the future JIT ([`ExecutionEngine`]) and the
//! interpreter ([`Interpreter`]).
//!
//! `cpu` never names a device: port I/O, MMIO and interrupt acknowledgement go through
//! [`CpuBus`], which the machine implements.

pub mod bus;
pub mod compare;
pub mod cpuid;
pub mod engine;
pub mod exception;
pub mod flags;
pub mod fpu;
pub mod helpers;
pub mod interp;
pub mod persist;
pub mod simd;
pub mod state;

pub use bus::{CpuBus, RamBus};
pub use engine::{ExecutionEngine, RunExit};
pub use exception::Exception;
pub use interp::Interpreter;
pub use state::{CpuMode, CpuState, DescriptorTable, SegReg, Segment};
