//! Crash consistency: a child process writes and flushes; the parent kills it at random points,
//! many times. The image must always open and pass check (no corruption), and every write that a
//! flush acknowledged before the kill must be intact.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use vmdk::{CreateOptions, Image, Subformat};

const SLOT: u64 = 100_000;
const PER_ROUND: u64 = 24;
const ROUNDS: u64 = 100;
const SIZE: u64 = SLOT * PER_ROUND * ROUNDS + (1 << 20);

/// The write for slot `i`: (offset, data), then an optional zeroed sub-range.
fn slot_write(i: u64) -> (u64, Vec<u8>, Option<(u64, u64)>) {
    let off = i * SLOT + (i * 7919) % 3000;
    let len = 60_000 + (i * 31) % 30_000;
    let mut d = vec![0u8; len as usize];
    Rng(i * 2 + 1).fill(&mut d);
    let zero = (i % 5 == 4).then(|| (off + 1000, 40_000));
    (off, d, zero)
}

fn expected(i: u64) -> (u64, Vec<u8>) {
    let (off, mut d, zero) = slot_write(i);
    if let Some((zo, zl)) = zero {
        d[(zo - off) as usize..(zo - off + zl) as usize].fill(0);
    }
    (off, d)
}

/// Runs in the child process only (selected by the environment variable).
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var("VMDK_CRASH_CHILD") else { return };
    let first: u64 = std::env::var("VMDK_CRASH_FIRST").unwrap().parse().unwrap();
    let img = Image::open_rw(&path).unwrap();
    let mut rng = Rng(first + 77);
    for i in first..first + PER_ROUND {
        let (off, d, zero) = slot_write(i);
        img.write_at(&d, off).unwrap();
        if let Some((zo, zl)) = zero {
            img.write_zeroes(zo, zl).unwrap();
        }
        if rng.below(3) == 0 || i + 1 == first + PER_ROUND {
            img.flush().unwrap();
            println!("ACK {}", i + 1);
        }
    }
}

#[test]
fn test_kill_writer_at_random_points() {
    let d = Scratch::new("crash");
    let p = d.path("crash.vmdk");
    let mut o = CreateOptions::new(Subformat::MonolithicSparse, SIZE);
    o.zeroed_grain = true;
    vmdk::create(&p, &o).unwrap();
    {
        // No preallocated grain tables: the writer also allocates tables and updates both
        // directories, so kills land between those writes too.
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut b = [0u8; 512];
        f.read_exact_at(&mut b, 0).unwrap();
        let h = vmdk::header::SparseHeader::parse(&b).unwrap();
        let zeros = vec![0u8; (h.gd_sectors() * 512) as usize];
        f.write_all_at(&zeros, h.gd_offset * 512).unwrap();
        f.write_all_at(&zeros, h.rgd_offset * 512).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let qemu = have_qemu("crash test: qemu-img check");
    let mut rng = Rng(0xC0FFEE);
    let mut kills = 0;
    let mut leaky_rounds = 0;
    for round in 0..ROUNDS {
        let first = round * PER_ROUND;
        // Slots of this round start from the state the previous round left; unacknowledged slots of
        // earlier rounds are never checked again.
        let mut child = Command::new(&exe)
            .args(["crash_child_writer", "--exact", "--nocapture", "--test-threads=1"])
            .env("VMDK_CRASH_CHILD", &p)
            .env("VMDK_CRASH_FIRST", first.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let wait_acks = rng.below(6);
        let delay = rng.below(4000);
        let mut seen = first;
        let mut lines = BufReader::new(out).lines();
        let mut got = 0;
        while got < wait_acks {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("ACK ") => {
                    seen = l[4..].trim().parse().unwrap();
                    got += 1;
                }
                Some(_) => {}
                None => break,
            }
        }
        std::thread::sleep(std::time::Duration::from_micros(delay));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if std::os::unix::process::ExitStatusExt::signal(&status) == Some(9) {
            kills += 1;
        }
        // Acks printed before the kill landed are acknowledged too.
        for l in lines.map_while(Result::ok) {
            if let Some(n) = l.strip_prefix("ACK ") {
                seen = n.trim().parse().unwrap();
            }
        }
        // Slots of this round up to `seen` are acknowledged; those of earlier rounds were verified
        // when they were acknowledged, and must stay intact.
        let round_acked: Vec<u64> = (first..seen).collect();
        leaky_rounds += verify_round(&p, &round_acked, round);
        ACKED.with(|a| a.borrow_mut().extend_from_slice(&round_acked));
        if qemu {
            let (rc, out) = qemu_img(&["check", s(&p)]);
            assert_eq!(rc, 0, "round {round}: qemu-img check: {out}");
        }
    }
    println!("{kills} of {ROUNDS} writers killed mid-run; {leaky_rounds} rounds left leaked space");
    assert!(kills >= ROUNDS / 2, "only {kills} kills");
}

thread_local! {
    static ACKED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Verifies every acknowledged slot and a full read; returns 1 if check reported leaks.
fn verify_round(path: &Path, now: &[u64], round: u64) -> usize {
    let img = Image::open(path).unwrap_or_else(|e| panic!("round {round}: image does not open: {e}"));
    let all: Vec<u64> = ACKED.with(|a| a.borrow().iter().copied().chain(now.iter().copied()).collect());
    for i in all {
        let (off, d) = expected(i);
        let mut b = vec![0u8; d.len()];
        img.read_at(&mut b, off).unwrap();
        assert!(b == d, "round {round}: acknowledged write {i} is not intact");
    }
    let mut b = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < img.size() {
        let n = (img.size() - off).min(1 << 20) as usize;
        img.read_at(&mut b[..n], off).unwrap();
        off += n as u64;
    }
    drop(img);
    let rep = vmdk::check(path, false).unwrap();
    assert!(rep.corruptions.is_empty(), "round {round}: check found corruption: {:?}", rep.corruptions);
    usize::from(!rep.leaks.is_empty())
}
