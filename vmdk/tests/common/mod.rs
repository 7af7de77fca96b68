//! Helpers shared by the integration tests: scratch directories, qemu-img, deterministic data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../../tests/support/mod.rs"]
mod support;
use support::report_skip;

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("vmdk-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether qemu-img is usable. Outside CI a missing qemu-img skips (prints "skipped: ..."); in CI
/// (env CI set) it fails the test.
pub fn have_qemu(test: &str) -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: qemu-img is required in CI (install qemu-utils)");
        }
        report_skip(&format!("vmdk {test}: qemu-img not found (install qemu-utils)"));
    }
    ok
}

/// Runs a command, returns (exit code, stdout+stderr).
pub fn run(cmd: &str, args: &[&str]) -> (i32, String) {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s += &String::from_utf8_lossy(&o.stderr);
    (o.status.code().unwrap_or(-1), s)
}

pub fn qemu_img(args: &[&str]) -> (i32, String) {
    run("qemu-img", args)
}

pub fn qemu_ok(args: &[&str]) -> String {
    let (rc, out) = qemu_img(args);
    assert_eq!(rc, 0, "qemu-img {args:?} failed: {out}");
    out
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// xorshift64* generator (deterministic test data).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Writes a raw file of `size` bytes with mixed content (zeros, random, text) in the byte ranges
/// given by `at` (others stay sparse zeros). Returns nothing; read it back with std::fs.
pub fn mixed_raw(path: &Path, size: u64, at: &[u64], seed: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = Rng(seed | 1);
    for (i, &off) in at.iter().enumerate() {
        let len = (300_000 + rng.below(500_000)).min(size - off) as usize;
        let mut b = vec![0u8; len];
        match i % 3 {
            0 => rng.fill(&mut b),
            1 => {
                let t = b"The quick brown fox jumps over the lazy dog. 0123456789\n";
                for (j, x) in b.iter_mut().enumerate() {
                    *x = t[j % t.len()];
                }
            }
            _ => {
                // Sparse bytes within mostly zeros (not grain aligned).
                for _ in 0..50 {
                    let j = rng.below(len as u64) as usize;
                    b[j] = 0xA5;
                }
            }
        }
        f.write_all_at(&b, off).unwrap();
    }
}

/// Reads a whole image through the library and compares with a raw file, chunk by chunk.
pub fn assert_same_as_raw(img: &dyn vmdk::BlockDevice, raw: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(raw).unwrap();
    let len = f.metadata().unwrap().len();
    assert_eq!(img.len(), len, "size differs from {}", raw.display());
    let mut a = vec![0u8; 1 << 20];
    let mut b = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(1 << 20) as usize;
        img.read_at(&mut a[..n], off).unwrap();
        f.read_exact_at(&mut b[..n], off).unwrap();
        if a[..n] != b[..n] {
            let i = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y).unwrap();
            panic!("content differs from {} at byte {}", raw.display(), off + i as u64);
        }
        off += n as u64;
    }
}
