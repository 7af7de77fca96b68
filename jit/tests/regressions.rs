//! Divergences the 10,000-stream hostile lockstep campaign found, as small guests run under
//! both engines (the JIT one-shot and sliced, against the interpreter) with the result the SDM
//! gives checked by hand.

mod common;

use common::*;
use cpu::RunExit;

/// Prot32 stream 4609: `66 C3` in 32-bit code is RET with a 16-bit operand size: it pops two
/// bytes into IP (EIP = IP) — SDM vol. 2 RET. The inline RET popped four.
#[test]
fn test_issue_9_ret_with_operand_size_prefix_pops_16_bits() {
    let mut code = vec![0x68, 0x10, 0x10, 0, 0]; // 1000: push 0x1010
    code.extend_from_slice(&[0x66, 0xC3]); // 1005: ret (16-bit)
    code.resize(0x10, 0xCC);
    code.push(0xF4); // 1010: hlt
    let (exit, c, _) = lockstep("retw", &code, &state(32), 100);
    assert_eq!(exit, RunExit::Halted);
    assert_eq!(c.rip, 0x1011, "returned to IP 0x1010");
    assert_eq!(c.gpr[4], 0x7_0000 - 4 + 2, "ESP: four pushed, two popped");
}

/// Prot32Ring3 stream 5648: a store with a CS override in protected mode writes to a code
/// segment, which is never writable: #GP (SDM vol. 3 5.4.1). The inline store wrote.
#[test]
fn test_issue_9_store_through_cs_override_faults() {
    // mov eax, 0x11 ; mov [0x2000], eax (its slow path fills the TLB, so the next access
    // would take the inline fast path) ; sub cs:[0x2000], esp ; hlt. No IDT here: the #GP
    // escalates to a triple fault.
    let code = [
        0xB8, 0x11, 0, 0, 0, // mov eax, 0x11
        0xA3, 0x00, 0x20, 0x00, 0x00, // mov [0x2000], eax
        0x2E, 0x29, 0x25, 0x00, 0x20, 0x00, 0x00, // sub cs:[0x2000], esp
        0xF4,
    ];
    let (exit, c, bus) = lockstep("cs-store", &code, &state(32), 100);
    assert_eq!(exit, RunExit::TripleFault);
    assert_eq!(c.icount, 3);
    let mut b = [0u8; 4];
    bus.mem.read(base::GuestPhysAddr(0x2000), &mut b).unwrap();
    assert_eq!(b, [0x11, 0, 0, 0], "the SUB wrote nothing");
}

/// A store through a DS holding a readable code segment (flat base and limit) must #GP (SDM
/// vol. 3 5.4.1) even when the TLB already allows writes to the page: the mode key's "flat"
/// bit, which lets the JIT access memory inline, requires SS, DS and ES to be writable data
/// segments.
#[test]
fn test_issue_9_store_through_read_only_ds_faults() {
    // mov eax, 0x11 ; mov es:[0x2000], eax (fills the TLB's write entry) ; mov [0x2000], esp ;
    // hlt. No IDT: the #GP escalates to a triple fault.
    let code = [
        0xB8, 0x11, 0, 0, 0, // mov eax, 0x11
        0x26, 0xA3, 0x00, 0x20, 0x00, 0x00, // mov es:[0x2000], eax
        0x89, 0x25, 0x00, 0x20, 0x00, 0x00, // mov [0x2000], esp
        0xF4,
    ];
    let mut start = state(32);
    start.seg[cpu::SegReg::Ds as usize] = start.seg[cpu::SegReg::Cs as usize];
    let (exit, c, bus) = lockstep("ds-code-store", &code, &start, 100);
    assert_eq!(exit, RunExit::TripleFault);
    assert_eq!(c.icount, 3);
    let mut b = [0u8; 4];
    bus.mem.read(base::GuestPhysAddr(0x2000), &mut b).unwrap();
    assert_eq!(b, [0x11, 0, 0, 0], "the store through DS wrote nothing");
}

/// Prot32 stream 869 (found by the register-cache work): a self-loop `or al, bh; pop edx;
/// jl <entry>` whose POP writes the flags back to `CpuState` (its slow path may fault): the
/// loop's JL must branch on the guest's flags (SF != OF after the OR), loaded back into the
/// host's, not on what the flag write-back left there.
#[test]
fn test_issue_9_self_loop_branches_on_flags_synced_by_a_pop() {
    // 1000: mov al, 0x80 ; 1002: or al, bh ; 1004: pop edx ; 1005: jl 1002 ; hlt
    let code = [0xB0, 0x80, 0x08, 0xF8, 0x5A, 0x7C, 0xFB, 0xF4];
    let mut start = state(32);
    start.gpr[3] = 0;
    let (exit, c, _) = lockstep("jl-after-pop", &code, &start, 40);
    // OR AL(0x80), BH(0): SF = 1, OF = 0, so JL is always taken: the budget ends the loop.
    assert_eq!(exit, RunExit::BudgetExhausted);
    assert_eq!(c.icount, 40);
    assert_eq!(c.gpr[4], 0x7_0000 + 4 * 13, "13 POPs in 1 + 13 * 3 instructions");
}

/// Structured fuzzing (jit/tests/structured_fuzz.rs, Ring3Paged32 program 7410): ROR by 1
/// right after a CMP whose flags the JIT could make again by running it, then a PUSH. The
/// rotate put its CF and OF in the host's flags but the emitter still took the flags for the
/// CMP's, so the PUSH's probe dropped them and the CMP ran again in their place: CF and OF
/// were the CMP's. By hand (SDM vol. 2 ROR): EAX = 0xDDF42C10 rotated right by 1 is
/// 0x6EFA1608, CF = bit 31 = 0, OF = bit 31 ^ bit 30 = 1; the CMP (0x1DCF5193 - 0x4A05F3E =
/// 0x192EF255) leaves SF = 0, ZF = 0, PF = 1 (0x55 has four bits set) and AF = 1 (3 - E
/// borrows from bit 4), which ROR keeps. (The CMP's own CF and OF are both 0.)
#[test]
fn test_issue_9_rotate_by_one_after_a_recomputable_cmp() {
    use iced_x86::code_asm::*;
    for bits in [32u32, 64] {
        let code = assemble(bits, |a| {
            a.mov(eax, 0xDDF4_2C10u32).unwrap();
            a.mov(ecx, 0x1DCF_5193u32).unwrap();
            a.cmp(ecx, 0x4A0_5F3E).unwrap();
            a.ror(eax, 1).unwrap();
            if bits == 64 {
                a.push(rcx).unwrap();
                a.pushfq().unwrap();
                a.pop(rdx).unwrap();
            } else {
                a.push(ecx).unwrap();
                a.pushfd().unwrap();
                a.pop(edx).unwrap();
            }
            a.hlt().unwrap();
        });
        let (exit, c, _) = lockstep("ror1-after-cmp", &code, &state(bits), 100);
        assert_eq!(exit, RunExit::Halted, "{bits}-bit");
        assert_eq!(c.gpr[0], 0x6EFA_1608, "{bits}-bit: EAX");
        // OF | AF | PF.
        assert_eq!(c.gpr[2] & 0x8D5, 0x814, "{bits}-bit: status flags in {:#x}", c.gpr[2]);
    }
}
