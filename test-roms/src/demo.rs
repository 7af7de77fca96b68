//! The demo guest `ferrovisor run` boots when given no image: real mode -> protected mode ->
//! long mode, then a banner, the CPU vendor string, an ASCII Mandelbrot set in fixed-point
//! arithmetic and a sieve of Eratosthenes on COM1; it ends with `cli; hlt` (a clean power-off).
//!
//! [`mandelbrot_reference`] and [`primes_reference`] compute the same text natively, so a test
//! compares what the guest printed with what the host CPU computed.

use crate::layout::{build, Mode};
use crate::{Rom, COM1};
use iced_x86::code_asm::*;

/// First line the demo prints.
pub const DEMO_BANNER: &str = "Ferrovisor demo guest: real mode -> protected mode -> 64-bit long mode\n";

/// Fixed-point fraction bits of the Mandelbrot arithmetic.
const F: i64 = 12;
const ROWS: i64 = 24;
const COLS: i64 = 72;
const XMIN: i64 = -2 * 4096 - 819; // -2.2
const XSTEP: i64 = 182; // 3.2 / 72
const YMIN: i64 = -4915; // -1.2
const YSTEP: i64 = 427; // 2.4 / 23
const MAXIT: u32 = 36;
const PALETTE: &[u8; 10] = b" .:-=+*#%@";
/// The sieve covers 0..SIEVE_N.
const SIEVE_N: u32 = 1000;
/// Physical address of the sieve (above 1 MiB: reached through the long-mode identity map).
const SIEVE: u64 = 0x10_0000;
/// Scratch for the CPUID vendor string.
const VENDOR: u64 = 0x700;
/// Primes per output line.
const PER_LINE: u32 = 12;

/// The Mandelbrot picture the demo prints, computed on the host with the same integer algorithm.
pub fn mandelbrot_reference() -> String {
    let mut s = String::new();
    let mut ci = YMIN;
    for _ in 0..ROWS {
        let mut cr = XMIN;
        for _ in 0..COLS {
            let (mut zr, mut zi, mut n) = (0i64, 0i64, 0u32);
            while n < MAXIT {
                let zr2 = (zr * zr) >> F;
                let zi2 = (zi * zi) >> F;
                if zr2 + zi2 > 4 << F {
                    break;
                }
                zi = ((zr * zi) >> (F - 1)) + ci;
                zr = zr2 - zi2 + cr;
                n += 1;
            }
            s.push(PALETTE[(n / 4) as usize] as char);
            cr += XSTEP;
        }
        s.push('\n');
        ci += YSTEP;
    }
    s
}

/// The prime table the demo prints, computed on the host by trial division.
pub fn primes_reference() -> String {
    let primes: Vec<u32> = (2..SIEVE_N).filter(|&n| (2..n).take_while(|d| d * d <= n).all(|d| n % d != 0)).collect();
    let mut s = format!("Primes below {SIEVE_N}:\n");
    for (i, p) in primes.iter().enumerate() {
        s.push_str(&format!("{p:>5}"));
        if (i as u32 + 1).is_multiple_of(PER_LINE) {
            s.push('\n');
        }
    }
    s.push('\n');
    s.push_str(&format!("{} primes below {SIEVE_N}\n", primes.len()));
    s
}

/// The demo guest image.
pub fn demo() -> Rom {
    build(Mode::Long64, |a| {
        let mut putc = a.create_label();
        let mut puts = a.create_label();
        let mut putdec = a.create_label();
        let mut banner = a.create_label();
        let mut vendor_msg = a.create_label();
        let mut mandel_msg = a.create_label();
        let mut primes_msg = a.create_label();
        let mut count_msg = a.create_label();
        let mut palette = a.create_label();

        a.lea(rsi, ptr(banner))?;
        a.call(puts)?;

        // CPUID leaf 0: the 12-byte vendor string in EBX, EDX, ECX.
        a.xor(eax, eax)?;
        a.cpuid()?;
        a.mov(dword_ptr(VENDOR), ebx)?;
        a.mov(dword_ptr(VENDOR + 4), edx)?;
        a.mov(dword_ptr(VENDOR + 8), ecx)?;
        a.mov(byte_ptr(VENDOR + 12), 0)?;
        a.lea(rsi, ptr(vendor_msg))?;
        a.call(puts)?;
        a.mov(esi, VENDOR as u32)?;
        a.call(puts)?;
        a.mov(al, 10)?;
        a.call(putc)?;

        // Mandelbrot: r12 = ci, r13 = cr, r14 = rows left, r15 = columns left,
        // r8 = zr, r9 = zi, r10 = zr^2, r11 = zi^2, ecx = iterations.
        a.lea(rsi, ptr(mandel_msg))?;
        a.call(puts)?;
        a.mov(r12, YMIN)?;
        a.mov(r14d, ROWS as u32)?;
        let mut row = a.create_label();
        let mut col = a.create_label();
        let mut iterate = a.create_label();
        let mut escaped = a.create_label();
        a.set_label(&mut row)?;
        a.mov(r13, XMIN)?;
        a.mov(r15d, COLS as u32)?;
        a.set_label(&mut col)?;
        a.xor(r8d, r8d)?;
        a.xor(r9d, r9d)?;
        a.xor(ecx, ecx)?;
        a.set_label(&mut iterate)?;
        a.mov(r10, r8)?;
        a.imul_2(r10, r8)?;
        a.sar(r10, F as u32)?;
        a.mov(r11, r9)?;
        a.imul_2(r11, r9)?;
        a.sar(r11, F as u32)?;
        a.lea(rax, qword_ptr(r10 + r11))?;
        a.cmp(rax, 4 << F)?;
        a.jg(escaped)?;
        a.mov(rax, r8)?;
        a.imul_2(rax, r9)?;
        a.sar(rax, (F - 1) as u32)?;
        a.add(rax, r12)?;
        a.mov(r9, rax)?;
        a.mov(r8, r10)?;
        a.sub(r8, r11)?;
        a.add(r8, r13)?;
        a.inc(ecx)?;
        a.cmp(ecx, MAXIT as i32)?;
        a.jb(iterate)?;
        a.set_label(&mut escaped)?;
        a.mov(eax, ecx)?;
        a.shr(eax, 2)?;
        a.lea(rbx, ptr(palette))?;
        a.mov(al, byte_ptr(rbx + rax))?;
        a.call(putc)?;
        a.add(r13, XSTEP as i32)?;
        a.dec(r15d)?;
        a.jnz(col)?;
        a.mov(al, 10)?;
        a.call(putc)?;
        a.add(r12, YSTEP as i32)?;
        a.dec(r14d)?;
        a.jnz(row)?;

        // Sieve of Eratosthenes over 0..SIEVE_N at SIEVE (one byte per number).
        a.lea(rsi, ptr(primes_msg))?;
        a.call(puts)?;
        a.mov(edi, SIEVE as u32)?;
        a.mov(al, 1)?;
        a.mov(ecx, SIEVE_N)?;
        a.rep().stosb()?;
        a.mov(word_ptr(SIEVE), 0u32)?;
        a.mov(ebx, 2u32)?;
        let mut outer = a.create_label();
        let mut inner = a.create_label();
        let mut next = a.create_label();
        let mut sieved = a.create_label();
        a.set_label(&mut outer)?;
        a.mov(eax, ebx)?;
        a.imul_2(eax, ebx)?;
        a.cmp(eax, SIEVE_N as i32)?;
        a.jae(sieved)?;
        a.cmp(byte_ptr(rbx + SIEVE as i32), 0)?;
        a.je(next)?;
        a.set_label(&mut inner)?;
        a.mov(byte_ptr(rax + SIEVE as i32), 0)?;
        a.add(eax, ebx)?;
        a.cmp(eax, SIEVE_N as i32)?;
        a.jb(inner)?;
        a.set_label(&mut next)?;
        a.inc(ebx)?;
        a.jmp(outer)?;
        a.set_label(&mut sieved)?;
        // Print: ebx = number, r12d = primes so far.
        a.xor(ebx, ebx)?;
        a.xor(r12d, r12d)?;
        let mut each = a.create_label();
        let mut skip = a.create_label();
        a.set_label(&mut each)?;
        a.cmp(byte_ptr(rbx + SIEVE as i32), 0)?;
        a.je(skip)?;
        a.mov(eax, ebx)?;
        a.mov(edi, 5u32)?;
        a.call(putdec)?;
        a.inc(r12d)?;
        a.mov(eax, r12d)?;
        a.xor(edx, edx)?;
        a.mov(ecx, PER_LINE)?;
        a.div(ecx)?;
        a.test(edx, edx)?;
        a.jnz(skip)?;
        a.mov(al, 10)?;
        a.call(putc)?;
        a.set_label(&mut skip)?;
        a.inc(ebx)?;
        a.cmp(ebx, SIEVE_N as i32)?;
        a.jb(each)?;
        a.mov(al, 10)?;
        a.call(putc)?;
        a.mov(eax, r12d)?;
        a.xor(edi, edi)?;
        a.call(putdec)?;
        a.lea(rsi, ptr(count_msg))?;
        a.call(puts)?;
        // Power off: halt with interrupts disabled.
        a.cli()?;
        a.hlt()?;

        // putc: AL to COM1 once the transmit holding register is empty (LSR bit 5).
        a.set_label(&mut putc)?;
        a.push(rdx)?;
        a.push(rax)?;
        a.mov(edx, u32::from(COM1 + 5))?;
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.in_(al, dx)?;
        a.test(al, 0x20)?;
        a.jz(wait)?;
        a.pop(rax)?;
        a.mov(edx, u32::from(COM1))?;
        a.out(dx, al)?;
        a.pop(rdx)?;
        a.ret()?;

        // puts: the NUL-terminated string at RSI.
        a.set_label(&mut puts)?;
        let mut end = a.create_label();
        a.lodsb()?;
        a.test(al, al)?;
        a.jz(end)?;
        a.call(putc)?;
        a.jmp(puts)?;
        a.set_label(&mut end)?;
        a.ret()?;

        // putdec: RAX in decimal, right-aligned in EDI columns.
        a.set_label(&mut putdec)?;
        a.push(rbx)?;
        a.push(rcx)?;
        a.push(rdx)?;
        a.mov(ebx, 10u32)?;
        a.xor(ecx, ecx)?;
        let mut digit = a.create_label();
        let mut pad = a.create_label();
        let mut emit = a.create_label();
        a.set_label(&mut digit)?;
        a.xor(edx, edx)?;
        a.div(rbx)?;
        a.push(rdx)?;
        a.inc(ecx)?;
        a.test(rax, rax)?;
        a.jnz(digit)?;
        a.mov(edx, edi)?;
        a.sub(edx, ecx)?;
        a.jle(emit)?;
        a.set_label(&mut pad)?;
        a.mov(al, u32::from(b' '))?;
        a.call(putc)?;
        a.dec(edx)?;
        a.jnz(pad)?;
        a.set_label(&mut emit)?;
        a.pop(rax)?;
        a.add(al, u32::from(b'0'))?;
        a.call(putc)?;
        a.dec(ecx)?;
        a.jnz(emit)?;
        a.pop(rdx)?;
        a.pop(rcx)?;
        a.pop(rbx)?;
        a.ret()?;

        let z = |s: &str| [s.as_bytes(), &[0]].concat();
        a.set_label(&mut banner)?;
        a.db(&z(DEMO_BANNER))?;
        a.set_label(&mut vendor_msg)?;
        a.db(&z("CPU vendor: "))?;
        a.set_label(&mut mandel_msg)?;
        a.db(&z("\nThe Mandelbrot set, in 12-bit fixed point:\n"))?;
        a.set_label(&mut primes_msg)?;
        a.db(&z(&format!("\nPrimes below {SIEVE_N}:\n")))?;
        a.set_label(&mut count_msg)?;
        a.db(&z(&format!(" primes below {SIEVE_N}\n")))?;
        a.set_label(&mut palette)?;
        a.db(PALETTE)
    })
    .expect("demo guest assembles")
}
