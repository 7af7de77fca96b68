//! Malformed images: a clear error every time, no panic, no absurd allocation.

mod common;
mod corpus;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Records the largest single allocation so the test can prove sizes from files are bounded.
struct Tracking;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only records the size.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LARGEST.fetch_max(n, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Tracking = Tracking;

#[test]
fn test_malformed_corpus() {
    let d = common::Scratch::new("corpus");
    let cases = corpus::build(&d.0);
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (name, p) in &cases {
        LARGEST.store(0, Ordering::Relaxed);
        let r = std::panic::catch_unwind(|| corpus::first_error(p));
        let big = LARGEST.load(Ordering::Relaxed);
        match r {
            Err(_) => failures.push(format!("{name}: PANIC")),
            Ok(None) => failures.push(format!("{name}: accepted as valid")),
            Ok(Some(e)) => {
                println!("{name:40} -> {e}");
                if e.contains('\n') || e.len() > 400 {
                    failures.push(format!("{name}: error not one clear line: {e:?}"));
                }
            }
        }
        if big > 16 << 20 {
            failures.push(format!("{name}: allocated {big} bytes at once"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
