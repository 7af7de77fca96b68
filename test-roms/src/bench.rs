//! A CPU-bound benchmark guest: a Multiboot v1 kernel (a.out kludge, loaded at 1 MiB) that
//! QEMU's `-kernel` boots as well as `ferrovisor run --multiboot`. It runs integer loops, a hash
//! over a buffer, an insertion sort and recursive calls, prints a checksum in hex on COM1 and
//! exits through the isa-debug-exit port with [`crate::PASS`].
//!
//! [`bench_reference`] computes the same checksum natively.

use crate::{COM1, EXIT_PORT, PASS};
use iced_x86::code_asm::*;

const LOAD: u32 = 0x10_0000;
const HEADER_LEN: u32 = 32;
const BUF: u32 = 0x20_0000;
const SORT: u32 = 0x30_0000;
const STACK: u32 = 0x18_0000;

/// Workload sizes for a scale factor.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    loop_iters: u32,
    words: u32,
    hash_passes: u32,
    sort_len: u32,
    fib_n: u32,
}

fn sizes(scale: u32) -> Sizes {
    let s = scale.max(1);
    Sizes {
        loop_iters: 2_000_000 * s,
        words: 16 * 1024,
        hash_passes: 8 * s,
        sort_len: 600 + 200 * s,
        fib_n: 20 + s.min(8),
    }
}

fn lcg(x: u32) -> u32 {
    x.wrapping_mul(1_103_515_245).wrapping_add(12_345)
}

fn fib(n: u32) -> u32 {
    if n < 2 {
        n
    } else {
        fib(n - 1).wrapping_add(fib(n - 2))
    }
}

/// The checksum the guest prints, computed on the host.
pub fn bench_reference(scale: u32) -> u32 {
    let z = sizes(scale);
    // 1. Integer loop.
    let mut acc = 1u32;
    for n in (1..=z.loop_iters).rev() {
        acc = acc.wrapping_add(n);
        acc = acc.wrapping_add(acc << 1);
        acc ^= n;
    }
    let mut sum = acc;
    // 2. Buffer from an LCG.
    let mut buf = Vec::with_capacity(z.words as usize);
    let mut x = 1u32;
    for _ in 0..z.words {
        x = lcg(x);
        buf.push(x);
    }
    // 3. Hash.
    let mut h = 0x811C_9DC5u32;
    for _ in 0..z.hash_passes {
        for &w in &buf {
            h ^= w;
            h = h.wrapping_add(h << 1);
            h ^= h >> 1;
        }
    }
    sum ^= h;
    // 4. Insertion sort of the first sort_len words; then a position-weighted sum.
    let mut a = buf[..z.sort_len as usize].to_vec();
    for i in 1..a.len() {
        let key = a[i];
        let mut j = i;
        while j > 0 && a[j - 1] > key {
            a[j] = a[j - 1];
            j -= 1;
        }
        a[j] = key;
    }
    let mut s = 0u32;
    for &v in &a {
        s = s.wrapping_add(v);
        s ^= s >> 1;
    }
    sum = sum.wrapping_add(s);
    // 5. Recursion.
    sum = sum.wrapping_add(fib(z.fib_n));
    sum
}

/// The benchmark kernel image (`scale` multiplies the work; 1 takes about 17 million guest
/// instructions, 10 about 150 million).
pub fn bench_guest(scale: u32) -> Vec<u8> {
    let z = sizes(scale);
    let mut a = CodeAssembler::new(32).expect("32-bit assembler");
    let r = |e: Result<(), IcedError>| e.expect("bench guest assembles");
    let mut l1 = a.create_label();
    let mut fill = a.create_label();
    let mut pass = a.create_label();
    let mut word = a.create_label();
    let mut outer = a.create_label();
    let mut inner = a.create_label();
    let mut place = a.create_label();
    let mut sum_loop = a.create_label();
    let mut fibf = a.create_label();
    let mut fib_small = a.create_label();
    let mut hex = a.create_label();

    r(a.mov(esp, STACK));
    // 1. Integer loop: eax += ecx; eax += eax << 1; eax ^= ecx.
    r(a.mov(eax, 1u32));
    r(a.mov(ecx, z.loop_iters));
    r(a.set_label(&mut l1));
    r(a.add(eax, ecx));
    r(a.mov(edx, eax));
    r(a.shl(edx, 1));
    r(a.add(eax, edx));
    r(a.xor(eax, ecx));
    r(a.dec(ecx));
    r(a.jnz(l1));
    r(a.mov(edi, eax)); // edi: checksum
                        // 2. Buffer: x = x * 1103515245 + 12345.
    r(a.mov(eax, 1u32));
    r(a.mov(esi, BUF));
    r(a.mov(ecx, z.words));
    r(a.set_label(&mut fill));
    r(a.imul_3(eax, eax, 1_103_515_245i32));
    r(a.add(eax, 12_345));
    r(a.mov(dword_ptr(esi), eax));
    r(a.add(esi, 4));
    r(a.dec(ecx));
    r(a.jnz(fill));
    // 3. Hash: h ^= w; h += h << 1; h ^= h >> 1.
    r(a.mov(eax, 0x811C_9DC5u32));
    r(a.mov(ebx, z.hash_passes));
    r(a.set_label(&mut pass));
    r(a.xor(ecx, ecx));
    r(a.set_label(&mut word));
    r(a.xor(eax, dword_ptr(ecx * 4 + BUF)));
    r(a.mov(edx, eax));
    r(a.shl(edx, 1));
    r(a.add(eax, edx));
    r(a.mov(edx, eax));
    r(a.shr(edx, 1));
    r(a.xor(eax, edx));
    r(a.add(ecx, 1));
    r(a.cmp(ecx, z.words));
    r(a.jne(word));
    r(a.dec(ebx));
    r(a.jnz(pass));
    r(a.xor(edi, eax));
    // 4. Copy and insertion-sort the first sort_len words (esi = i, ebx = j, edx = key).
    r(a.mov(esi, SORT));
    r(a.xor(ecx, ecx));
    let mut copy = a.create_label();
    r(a.set_label(&mut copy));
    r(a.mov(eax, dword_ptr(ecx * 4 + BUF)));
    r(a.mov(dword_ptr(esi + ecx * 4), eax));
    r(a.add(ecx, 1));
    r(a.cmp(ecx, z.sort_len));
    r(a.jne(copy));
    r(a.mov(ecx, 1u32)); // i
    r(a.set_label(&mut outer));
    r(a.mov(edx, dword_ptr(esi + ecx * 4))); // key
    r(a.mov(ebx, ecx)); // j
    r(a.set_label(&mut inner));
    r(a.test(ebx, ebx));
    r(a.je(place));
    r(a.mov(eax, dword_ptr(esi + ebx * 4 - 4)));
    r(a.cmp(eax, edx));
    r(a.jbe(place));
    r(a.mov(dword_ptr(esi + ebx * 4), eax));
    r(a.sub(ebx, 1));
    r(a.jmp(inner));
    r(a.set_label(&mut place));
    r(a.mov(dword_ptr(esi + ebx * 4), edx));
    r(a.add(ecx, 1));
    r(a.cmp(ecx, z.sort_len));
    r(a.jne(outer));
    r(a.xor(eax, eax));
    r(a.xor(ecx, ecx));
    r(a.set_label(&mut sum_loop));
    r(a.add(eax, dword_ptr(esi + ecx * 4)));
    r(a.mov(edx, eax));
    r(a.shr(edx, 1));
    r(a.xor(eax, edx));
    r(a.add(ecx, 1));
    r(a.cmp(ecx, z.sort_len));
    r(a.jne(sum_loop));
    r(a.add(edi, eax));
    // 5. Recursion: fib(n).
    r(a.mov(eax, z.fib_n));
    r(a.call(fibf));
    r(a.add(edi, eax));
    // Print the checksum and exit.
    r(a.call(hex));
    r(a.mov(dx, EXIT_PORT as u32));
    r(a.mov(al, u32::from(PASS)));
    r(a.out(dx, al));
    r(a.cli());
    r(a.hlt());

    // fib(eax) -> eax (clobbers ebx, edx).
    r(a.set_label(&mut fibf));
    r(a.cmp(eax, 2));
    r(a.jb(fib_small));
    r(a.push(eax));
    r(a.sub(eax, 1));
    r(a.call(fibf));
    r(a.pop(edx));
    r(a.push(eax));
    r(a.mov(eax, edx));
    r(a.sub(eax, 2));
    r(a.call(fibf));
    r(a.pop(edx));
    r(a.add(eax, edx));
    r(a.set_label(&mut fib_small));
    r(a.ret());

    // Prints edi as 8 hex digits and a newline on COM1.
    r(a.set_label(&mut hex));
    r(a.mov(ecx, 8u32));
    r(a.mov(dx, u32::from(COM1)));
    let mut digit = a.create_label();
    let mut letter = a.create_label();
    let mut emit = a.create_label();
    r(a.set_label(&mut digit));
    r(a.rol(edi, 4));
    r(a.mov(eax, edi));
    r(a.and(eax, 0xF));
    r(a.cmp(eax, 10));
    r(a.jae(letter));
    r(a.add(eax, i32::from(b'0')));
    r(a.jmp(emit));
    r(a.set_label(&mut letter));
    r(a.add(eax, i32::from(b'a' - 10)));
    r(a.set_label(&mut emit));
    r(a.out(dx, al));
    r(a.dec(ecx));
    r(a.jnz(digit));
    r(a.mov(al, u32::from(b'\n')));
    r(a.out(dx, al));
    r(a.ret());

    let code = a.assemble(u64::from(LOAD + HEADER_LEN)).expect("bench guest assembles");
    // Multiboot v1 header with the a.out-kludge addresses (flag 16): load the whole file at
    // 1 MiB and enter right after the header.
    let magic = 0x1BAD_B002u32;
    let flags = 1u32 << 16;
    let mut img = Vec::new();
    for v in [magic, flags, 0u32.wrapping_sub(magic.wrapping_add(flags)), LOAD, LOAD, 0, 0, LOAD + HEADER_LEN] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    img.extend_from_slice(&code);
    img
}
