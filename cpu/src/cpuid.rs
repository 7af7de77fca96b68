//! The CPUID model. It advertises only what the CPU core implements.
//!
//! Vendor "GenuineIntel", family 6. Leaf 1 EDX: PSE, TSC, MSR, PAE, CX8, PGE, CMOV, PAT
//! (SEP, APIC, FPU, MMX, SSE are not advertised until they are implemented). Leaf 1 ECX: CX16,
//! POPCNT. Extended leaves: LM, NX, LAHF/SAHF in 64-bit mode, LZCNT (ABM), SYSCALL,
//! 40 physical and 48 linear address bits.

/// Leaf 1 EDX feature bits advertised.
pub const LEAF1_EDX: u32 = (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 13) | (1 << 15) | (1 << 16);
/// Leaf 1 ECX feature bits advertised.
pub const LEAF1_ECX: u32 = (1 << 13) | (1 << 23);

/// Executes CPUID for leaf `eax`, subleaf `ecx`: (EAX, EBX, ECX, EDX).
pub fn cpuid(eax: u32, ecx: u32) -> (u32, u32, u32, u32) {
    let _ = ecx;
    let text = |s: &[u8; 4]| u32::from_le_bytes(*s);
    match eax {
        0 => (7, text(b"Genu"), text(b"ntel"), text(b"ineI")),
        1 => (0x0006_0F11, 0x0001_0800, LEAF1_ECX, LEAF1_EDX),
        7 => (0, 0, 0, 0),
        0x8000_0000 => (0x8000_0008, 0, 0, 0),
        0x8000_0001 => (0, 0, (1 << 0) | (1 << 5), (1 << 11) | (1 << 20) | (1 << 29)),
        0x8000_0002..=0x8000_0004 => {
            let name = *b"Ferrovisor virtual CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
            let off = ((eax - 0x8000_0002) * 16) as usize;
            let w =
                |k: usize| u32::from_le_bytes([name[off + k], name[off + k + 1], name[off + k + 2], name[off + k + 3]]);
            (w(0), w(4), w(8), w(12))
        }
        0x8000_0008 => (mmu::MAX_PHYS_BITS | (48 << 8), 0, 0, 0),
        _ => (0, 0, 0, 0),
    }
}
