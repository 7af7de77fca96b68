//! Delta links: deep chains, CID renewal on first write, CID mismatch, split-extent deltas, and
//! writes into images qemu-img created.

mod common;
use common::*;
use vmdk::{CreateOptions, Image, Subformat};

const MIB: u64 = 1 << 20;

#[test]
fn test_deep_chain_and_cid_renewal() {
    let d = Scratch::new("deep");
    let size = 6 * MIB;
    let mut model = vec![0u8; size as usize];
    let mut prev = d.path("l0.vmdk");
    vmdk::create(&prev, &CreateOptions::new(Subformat::MonolithicSparse, size)).unwrap();
    let mut rng = Rng(5);
    for level in 0..8u64 {
        if level > 0 {
            let next = d.path(&format!("l{level}.vmdk"));
            vmdk::snapshot(&prev, &next, Subformat::MonolithicSparse, level % 2 == 0).unwrap();
            prev = next;
        }
        let img = Image::open_rw(&prev).unwrap();
        assert_eq!(img.chain_depth(), level as usize);
        let cid0 = img.cid();
        for _ in 0..20 {
            let len = 1 + rng.below(200_000) as usize;
            let off = rng.below(size - len as u64);
            if rng.below(4) == 0 {
                img.write_zeroes(off, len as u64).unwrap();
                model[off as usize..off as usize + len].fill(0);
            } else {
                let mut b = vec![0u8; len];
                rng.fill(&mut b);
                img.write_at(&b, off).unwrap();
                model[off as usize..off as usize + len].copy_from_slice(&b);
            }
        }
        let cid1 = img.cid();
        assert_ne!(cid0, cid1, "CID renewed on the first write");
        img.write_at(b"x", 0).unwrap();
        model[0] = b'x';
        assert_eq!(img.cid(), cid1, "CID renewed once per open");
        drop(img);
        assert_eq!(vmdk::image::read_descriptor(&prev).unwrap().cid, cid1, "new CID is on disk");
    }
    let img = Image::open(&prev).unwrap();
    let mut b = vec![0u8; size as usize];
    img.read_at(&mut b, 0).unwrap();
    assert!(b == model, "8-deep chain content");
    if have_qemu("test_deep_chain_and_cid_renewal") {
        let raw = d.path("model.raw");
        std::fs::write(&raw, &model).unwrap();
        let (rc, out) = qemu_img(&["compare", "-f", "raw", "-F", "vmdk", s(&raw), s(&prev)]);
        assert_eq!(rc, 0, "{out}");
    }
    // Writing into a middle layer renews its CID: the top no longer opens, with a clear error.
    let mid = d.path("l3.vmdk");
    Image::open_rw(&mid).unwrap().write_at(b"oops", 0).unwrap();
    let e = Image::open(&prev).unwrap_err();
    assert!(matches!(e, vmdk::Error::CidMismatch { .. }), "{e}");
    assert!(e.to_string().contains("l4.vmdk") || e.to_string().contains("CID"), "{e}");
}

#[test]
fn test_split_sparse_delta() {
    let d = Scratch::new("splitdelta");
    let base = d.path("base.vmdk");
    let size = (2 << 30) + 5 * MIB;
    vmdk::create(&base, &CreateOptions::new(Subformat::TwoGbMaxExtentSparse, size)).unwrap();
    {
        let b = Image::open_rw(&base).unwrap();
        b.write_at(&[1; 300_000], (2 << 30) - 100_000).unwrap();
    }
    let child = d.path("child.vmdk");
    vmdk::snapshot(&base, &child, Subformat::TwoGbMaxExtentSparse, false).unwrap();
    {
        let c = Image::open_rw(&child).unwrap();
        c.write_at(&[2; 1000], (2 << 30) - 500).unwrap();
    }
    let c = Image::open(&child).unwrap();
    let mut b = vec![0u8; 300_000];
    c.read_at(&mut b, (2 << 30) - 100_000).unwrap();
    assert!(b[..99_500].iter().all(|&x| x == 1));
    assert!(b[99_500..100_500].iter().all(|&x| x == 2));
    assert!(b[100_500..].iter().all(|&x| x == 1));
    if have_qemu("test_split_sparse_delta") {
        let (rc, out) = qemu_img(&["check", s(&child)]);
        assert_eq!(rc, 0, "{out}");
        let mut r = vec![0u8; 300_000];
        let raw = d.path("c.raw");
        qemu_ok(&["convert", "-O", "raw", s(&child), s(&raw)]);
        use std::os::unix::fs::FileExt;
        std::fs::File::open(&raw).unwrap().read_exact_at(&mut r, (2 << 30) - 100_000).unwrap();
        assert!(r == b);
    }
}

#[test]
fn test_write_into_qemu_created_images() {
    if !have_qemu("test_write_into_qemu_created_images") {
        return;
    }
    let d = Scratch::new("qcreated");
    for (name, opts) in [
        ("sparse", "subformat=monolithicSparse"),
        ("zeroed", "subformat=monolithicSparse,zeroed_grain=on"),
        ("flat", "subformat=monolithicFlat"),
        ("split", "subformat=twoGbMaxExtentSparse"),
        ("splitflat", "subformat=twoGbMaxExtentFlat"),
        ("stream", "subformat=streamOptimized"),
    ] {
        let p = d.path(&format!("{name}.vmdk"));
        qemu_ok(&["create", "-f", "vmdk", "-o", opts, s(&p), "40M"]);
        let (rc, out) = run("qemu-io", &["-f", "vmdk", "-c", "write -P 0x77 1M 3M", s(&p)]);
        // qemu can append whole grains to its own streams; other writes must succeed.
        assert!(rc == 0 || name == "stream", "{name}: {out}");
        let back = d.path(&format!("{name}.raw"));
        qemu_ok(&["convert", "-O", "raw", s(&p), s(&back)]);
        assert_same_as_raw(&Image::open(&p).unwrap(), &back);
        if name == "stream" {
            let e = Image::open_rw(&p).unwrap().write_at(b"x", 0).unwrap_err();
            assert!(matches!(e, vmdk::Error::StreamReadOnly { .. }), "{e}");
            continue;
        }
        let mut model = std::fs::read(&back).unwrap();
        {
            let img = Image::open_rw(&p).unwrap();
            let mut rng = Rng(name.len() as u64);
            for _ in 0..50 {
                let len = 1 + rng.below(150_000) as usize;
                let off = rng.below(40 * MIB - len as u64);
                let mut b = vec![0u8; len];
                rng.fill(&mut b);
                img.write_at(&b, off).unwrap();
                model[off as usize..off as usize + len].copy_from_slice(&b);
                if rng.below(3) == 0 {
                    img.write_zeroes(off / 65536 * 65536, 65536 * 2).unwrap();
                    model[(off / 65536 * 65536) as usize..(off / 65536 * 65536 + 131_072) as usize].fill(0);
                }
            }
        }
        std::fs::write(&back, &model).unwrap();
        let (rc, out) = qemu_img(&["check", s(&p)]);
        assert_eq!(rc, 0, "{name}: {out}");
        let (rc, out) = qemu_img(&["compare", "-f", "raw", "-F", "vmdk", s(&back), s(&p)]);
        assert_eq!(rc, 0, "{name}: {out}");
        assert_eq!(vmdk::check(&p, false).unwrap().exit_code(), 0, "{name}");
    }
}
