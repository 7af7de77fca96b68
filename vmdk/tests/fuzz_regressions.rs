//! Regression tests for what the mutation campaign (tests/fuzz_campaign.rs) found.

mod common;

use common::{have_qemu, qemu_img, s, Scratch};
use std::os::unix::fs::FileExt;
use vmdk::header::SparseHeader;
use vmdk::{CreateOptions, Image, Subformat};

const MIB: u64 = 1 << 20;

fn header(f: &std::fs::File) -> SparseHeader {
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, 0).unwrap();
    SparseHeader::parse(&b).unwrap()
}

/// A redundant GD entry pointing exactly at the end of the file is invalid when opened; it must
/// stay invalid when a write appends a grain there (it was then "valid" and the redundant table
/// was written over the new grain).
#[test]
fn test_stale_pointer_at_eof_is_not_revived_by_growth() {
    let d = Scratch::new("fz-stale-eof");
    let p = d.path("x.vmdk");
    vmdk::create(&p, &CreateOptions::new(Subformat::MonolithicSparse, 4 * MIB)).unwrap();
    Image::open_rw(&p).unwrap().write_at(&[0x11; 65536], 0).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let h = header(&f);
    let eof = (f.metadata().unwrap().len() / 512) as u32;
    f.write_all_at(&eof.to_le_bytes(), h.rgd_offset * 512).unwrap();
    {
        let img = Image::open_rw(&p).unwrap();
        img.write_at(&[0xC7; 4096], 2 * MIB).unwrap();
        img.flush().unwrap();
    }
    let img = Image::open(&p).unwrap();
    let mut b = vec![0u8; 4096];
    img.read_at(&mut b, 2 * MIB).unwrap();
    assert!(b.iter().all(|&x| x == 0xC7), "the new grain was overwritten");
    let rep = vmdk::check(&p, false).unwrap();
    assert!(rep.corruptions.iter().all(|c| !c.contains("overlaps")), "{rep:?}");
    if have_qemu("test_stale_pointer_at_eof_is_not_revived_by_growth") {
        let out = d.path("q.raw");
        assert_eq!(qemu_img(&["convert", "-O", "raw", s(&p), s(&out)]).0, 0);
        let q = std::fs::read(&out).unwrap();
        assert!(q[2 * MIB as usize..2 * MIB as usize + 4096].iter().all(|&x| x == 0xC7), "qemu-img reads it too");
    }
}

/// A capacity larger than the layout makes the grain directory cover live grain tables; writing
/// the directory back would destroy them, so writes are refused and check reports it.
#[test]
fn test_directory_grown_over_tables_refuses_writes() {
    let d = Scratch::new("fz-gd-grown");
    let p = d.path("x.vmdk");
    vmdk::create(&p, &CreateOptions::new(Subformat::MonolithicSparse, 64 * MIB)).unwrap();
    Image::open_rw(&p).unwrap().write_at(&[0x22; 65536], 0).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
    // 64 GiB: the directories grow to 16 sectors each and run over each other and the tables.
    f.write_all_at(&(64u64 << 21).to_le_bytes(), 0x0C).unwrap();
    drop(f);
    let before = std::fs::read(&p).unwrap();
    let img = Image::open_rw(&p).unwrap();
    assert!(img.write_at(&[1; 512], 40 << 30).is_err(), "write must be refused");
    drop(img);
    assert!(std::fs::read(&p).unwrap() == before, "nothing may change");
    let rep = vmdk::check(&p, false).unwrap();
    assert!(rep.corruptions.iter().any(|c| c.contains("grain directory")), "{rep:?}");
}

/// A delta child whose header's descriptorOffset was zeroed still has its descriptor at sector 1,
/// where qemu-img reads it: the parent must not be silently dropped (its data read as zeros).
#[test]
fn test_zeroed_descriptor_offset_keeps_the_parent() {
    let d = Scratch::new("fz-desc-zero");
    let base = d.path("base.vmdk");
    vmdk::create(&base, &CreateOptions::new(Subformat::MonolithicSparse, 4 * MIB)).unwrap();
    Image::open_rw(&base).unwrap().write_at(&[0x5B; 65536], MIB).unwrap();
    let child = d.path("child.vmdk");
    vmdk::snapshot(&base, &child, Subformat::MonolithicSparse, false).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&child).unwrap();
    f.write_all_at(&0u64.to_le_bytes(), 0x1C).unwrap();
    drop(f);
    let img = Image::open(&child).unwrap();
    assert_eq!(img.chain_depth(), 1, "the parent is kept");
    let mut b = vec![0u8; 65536];
    img.read_at(&mut b, MIB).unwrap();
    assert!(b.iter().all(|&x| x == 0x5B));
    drop(img);
    let rep = vmdk::check(&child, false).unwrap();
    assert!(rep.notes.iter().any(|c| c.contains("descriptorOffset")), "{rep:?}");
    if have_qemu("test_zeroed_descriptor_offset_keeps_the_parent") {
        let out = d.path("q.raw");
        assert_eq!(qemu_img(&["convert", "-O", "raw", s(&child), s(&out)]).0, 0);
        let q = std::fs::read(&out).unwrap();
        assert!(q[MIB as usize..MIB as usize + 65536].iter().all(|&x| x == 0x5B), "qemu-img agrees");
    }
}
