//! Model test: random reads, unaligned writes spanning grains and grain tables, zero writes,
//! flushes and reopens, applied both to an image and to an in-memory model that must agree.

mod common;
use common::*;
use std::path::Path;
use vmdk::{CreateOptions, Image, Subformat};

const MIB: u64 = 1 << 20;

fn run_model(path: &Path, model: &mut [u8], seed: u64, ops: usize) {
    let mut rng = Rng(seed);
    let size = model.len() as u64;
    let mut img = Image::open_rw(path).unwrap();
    assert_eq!(img.size(), size);
    let mut buf = Vec::new();
    for op in 0..ops {
        let kind = rng.below(100);
        // Lengths from a byte to several grains; sometimes across a 32 MiB grain-table boundary.
        let len = match rng.below(4) {
            0 => 1 + rng.below(600),
            1 => 1 + rng.below(70_000),
            2 => 1 + rng.below(400_000),
            _ => 64 * 1024 * (1 + rng.below(4)),
        }
        .min(size);
        let gts = size / (32 * MIB);
        let off = if gts > 0 && rng.below(5) == 0 {
            let gt = 32 * MIB * (1 + rng.below(gts));
            gt.saturating_sub(len / 2).min(size - len)
        } else if rng.below(4) == 0 {
            (rng.below(size - len + 1) / 65536 * 65536).min(size - len)
        } else {
            rng.below(size - len + 1)
        };
        let (o, l) = (off as usize, len as usize);
        match kind {
            0..=34 => {
                buf.resize(l, 0);
                img.read_at(&mut buf, off).unwrap();
                if buf[..] != model[o..o + l] {
                    let i = buf.iter().zip(&model[o..o + l]).position(|(a, b)| a != b).unwrap();
                    panic!("op {op}: read {off}+{len} differs at byte {}", off + i as u64);
                }
            }
            35..=74 => {
                buf.resize(l, 0);
                if rng.below(3) == 0 {
                    let v = rng.next() as u8;
                    buf.fill(v);
                } else {
                    rng.fill(&mut buf);
                }
                img.write_at(&buf, off).unwrap();
                model[o..o + l].copy_from_slice(&buf);
            }
            75..=89 => {
                img.write_zeroes(off, len).unwrap();
                model[o..o + l].fill(0);
            }
            90..=94 => img.flush().unwrap(),
            _ => {
                drop(img);
                img = Image::open_rw(path).unwrap();
            }
        }
    }
    img.flush().unwrap();
    drop(img);
    // Full comparison after a final reopen.
    let img = Image::open(path).unwrap();
    let mut b = vec![0u8; MIB as usize];
    for off in (0..size).step_by(MIB as usize) {
        let n = (size - off).min(MIB) as usize;
        img.read_at(&mut b[..n], off).unwrap();
        assert!(b[..n] == model[off as usize..off as usize + n], "final content differs in MiB at {off}");
    }
}

fn qemu_agrees(d: &Scratch, img: &Path, model: &[u8]) {
    if !have_qemu("model: qemu-img cross-check") {
        return;
    }
    let raw = d.path("model.raw");
    std::fs::write(&raw, model).unwrap();
    let (rc, out) = qemu_img(&["check", s(img)]);
    assert_eq!(rc, 0, "qemu-img check: {out}");
    let (rc, out) = qemu_img(&["compare", "-f", "raw", "-F", "vmdk", s(&raw), s(img)]);
    assert_eq!(rc, 0, "qemu-img compare: {out}");
}

#[test]
fn test_model_monolithic_sparse() {
    let d = Scratch::new("model-mono");
    let p = d.path("m.vmdk");
    let size = 70 * MIB + 4096 + 512;
    vmdk::create(&p, &CreateOptions::new(Subformat::MonolithicSparse, size)).unwrap();
    let mut model = vec![0u8; size as usize];
    run_model(&p, &mut model, 0x1234_5678, 5000);
    let rep = vmdk::check(&p, false).unwrap();
    assert_eq!(rep.exit_code(), 0, "{rep:?}");
    qemu_agrees(&d, &p, &model);
}

#[test]
fn test_model_zeroed_grain_delta() {
    let d = Scratch::new("model-delta");
    let base = d.path("base.vmdk");
    let size = 40 * MIB;
    let mut o = CreateOptions::new(Subformat::MonolithicSparse, size);
    o.zeroed_grain = true;
    vmdk::create(&base, &o).unwrap();
    let mut model = vec![0u8; size as usize];
    run_model(&base, &mut model, 99, 300);
    let base_model = model.clone();
    let child = d.path("child.vmdk");
    let mut o = CreateOptions::new(Subformat::MonolithicSparse, size);
    o.zeroed_grain = true;
    o.parent = Some(base.clone());
    vmdk::create(&child, &o).unwrap();
    run_model(&child, &mut model, 0xBEEF, 2500);
    assert_eq!(vmdk::check(&child, false).unwrap().exit_code(), 0);
    // The parent is untouched.
    let b = Image::open(&base).unwrap();
    let mut buf = vec![0u8; size as usize];
    b.read_at(&mut buf, 0).unwrap();
    assert!(buf == base_model, "parent changed");
    qemu_agrees(&d, &child, &model);
}

#[test]
fn test_model_multi_extent() {
    let d = Scratch::new("model-multi");
    vmdk::create(&d.path("a.vmdk"), &CreateOptions::new(Subformat::MonolithicSparse, 20 * MIB)).unwrap();
    let mut o = CreateOptions::new(Subformat::MonolithicSparse, 34 * MIB);
    o.zeroed_grain = true;
    vmdk::create(&d.path("c.vmdk"), &o).unwrap();
    std::fs::File::create(d.path("b-flat.vmdk")).unwrap().set_len(11 * MIB).unwrap();
    let desc =
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n\n\
                RW 40960 SPARSE \"a.vmdk\"\nRW 20480 FLAT \"b-flat.vmdk\" 2048\nRW 69632 SPARSE \"c.vmdk\"\n";
    let p = d.path("multi.vmdk");
    std::fs::write(&p, desc).unwrap();
    let mut model = vec![0u8; (20 + 10 + 34) as usize * MIB as usize];
    run_model(&p, &mut model, 7, 2000);
    assert_eq!(vmdk::check(&p, false).unwrap().exit_code(), 0);
    qemu_agrees(&d, &p, &model);
}

#[test]
fn test_concurrent_writers() {
    let d = Scratch::new("threads");
    let p = d.path("t.vmdk");
    vmdk::create(&p, &CreateOptions::new(Subformat::MonolithicSparse, 16 * MIB)).unwrap();
    let img = Image::open_rw(&p).unwrap();
    std::thread::scope(|sc| {
        for t in 0..4u8 {
            let img = &img;
            sc.spawn(move || {
                for i in 0..64u64 {
                    let off = u64::from(t) * 4 * MIB + i * 65536 + 100;
                    img.write_at(&[t + 1; 30000], off).unwrap();
                    let mut b = [0u8; 30000];
                    img.read_at(&mut b, off).unwrap();
                    assert!(b.iter().all(|&x| x == t + 1));
                }
            });
        }
    });
    img.flush().unwrap();
    assert_eq!(vmdk::check(&p, false).unwrap().exit_code(), 0);
}

#[test]
fn test_model_tables_allocated_on_demand() {
    // Grain directories with empty entries (no preallocated grain tables, as other writers make
    // them): writes must allocate GT and redundant GT on demand.
    use std::os::unix::fs::FileExt;
    let d = Scratch::new("model-nogt");
    let p = d.path("n.vmdk");
    let size = 100 * MIB;
    vmdk::create(&p, &CreateOptions::new(Subformat::MonolithicSparse, size)).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, 0).unwrap();
    let h = vmdk::header::SparseHeader::parse(&b).unwrap();
    let zeros = vec![0u8; (h.gd_sectors() * 512) as usize];
    f.write_all_at(&zeros, h.gd_offset * 512).unwrap();
    f.write_all_at(&zeros, h.rgd_offset * 512).unwrap();
    drop(f);
    let mut model = vec![0u8; size as usize];
    run_model(&p, &mut model, 4242, 1500);
    assert_eq!(vmdk::check(&p, false).unwrap().exit_code(), 0);
    qemu_agrees(&d, &p, &model);
}

#[test]
fn test_damaged_redundant_directory_is_never_written_over_metadata() {
    use std::os::unix::fs::FileExt;
    let d = Scratch::new("rgd-damage");
    for (case, bad) in [("stale", 0u32), ("points-at-gd", u32::MAX), ("points-at-header", 1)] {
        let p = d.path(&format!("{case}.vmdk"));
        vmdk::create(&p, &CreateOptions::new(Subformat::MonolithicSparse, 64 * MIB)).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut b = [0u8; 512];
        f.read_exact_at(&mut b, 0).unwrap();
        let h = vmdk::header::SparseHeader::parse(&b).unwrap();
        let bad = if bad == u32::MAX { h.gd_offset as u32 } else { bad };
        // An interrupted or damaged update: the redundant GD entry 1 is 0 or points at metadata.
        f.write_all_at(&bad.to_le_bytes(), h.rgd_offset * 512 + 4).unwrap();
        let rep = vmdk::check(&p, false).unwrap();
        assert_ne!(rep.exit_code(), 0, "{case}: damage detected");
        {
            let img = Image::open_rw(&p).unwrap();
            img.write_at(&[0xAB; 100_000], 32 * MIB + 5).unwrap();
            img.flush().unwrap();
        }
        let mut h2 = [0u8; 512];
        f.read_exact_at(&mut h2, 0).unwrap();
        assert_eq!(b, h2, "{case}: header untouched");
        let img = Image::open(&p).unwrap();
        let mut r = vec![0u8; 100_000];
        img.read_at(&mut r, 32 * MIB + 5).unwrap();
        assert!(r.iter().all(|&x| x == 0xAB), "{case}");
        let rep = vmdk::check(&p, false).unwrap();
        assert_eq!(rep.exit_code(), 0, "{case}: the write relocated the redundant table: {rep:?}");
        if have_qemu("rgd damage") {
            assert_eq!(qemu_img(&["check", s(&p)]).0, 0, "{case}");
        }
    }
}

#[test]
fn test_write_through_damaged_grain_pointer_is_refused() {
    use std::os::unix::fs::FileExt;
    let d = Scratch::new("gte-damage");
    let p = d.path("g.vmdk");
    vmdk::create(&p, &CreateOptions::new(Subformat::MonolithicSparse, 8 * MIB)).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, 0).unwrap();
    let h = vmdk::header::SparseHeader::parse(&b).unwrap();
    let mut e = [0u8; 4];
    f.read_exact_at(&mut e, h.gd_offset * 512).unwrap();
    let gt = u64::from(u32::from_le_bytes(e));
    // GTE 2 points at the grain directory.
    f.write_all_at(&(h.gd_offset as u32).to_le_bytes(), gt * 512 + 8).unwrap();
    let mut before = vec![0u8; 64 * 512];
    f.read_exact_at(&mut before, 0).unwrap();
    let img = Image::open_rw(&p).unwrap();
    let err = img.write_at(&[1; 4096], 2 * 65536).unwrap_err();
    assert!(err.to_string().contains("refusing to write"), "{err}");
    drop(img);
    let mut after = vec![0u8; 64 * 512];
    f.read_exact_at(&mut after, 0).unwrap();
    // Only the CID in the descriptor may differ (renewed before the refused write).
    let (desc_start, desc_end) = (h.desc_offset as usize * 512, (h.desc_offset + h.desc_size) as usize * 512);
    assert!(
        before[..desc_start] == after[..desc_start] && before[desc_end..] == after[desc_end..],
        "metadata untouched"
    );
}

#[test]
fn test_bare_sparse_extent_without_descriptor() {
    // A sparse extent with no embedded descriptor (descriptorOffset 0, a garbage descriptorSize)
    // opens as a monolithic disk and takes writes; there is no stored CID to renew.
    use std::os::unix::fs::FileExt;
    let d = Scratch::new("bare");
    let p = d.path("bare.vmdk");
    vmdk::create(&p, &CreateOptions::new(Subformat::MonolithicSparse, 4 * MIB)).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.write_all_at(&0u64.to_le_bytes(), 0x1C).unwrap();
    f.write_all_at(&(1u64 << 62).to_le_bytes(), 0x24).unwrap();
    {
        let img = Image::open_rw(&p).unwrap();
        img.write_at(&[3; 70_000], 1000).unwrap();
    }
    let img = Image::open(&p).unwrap();
    let mut b = vec![0u8; 70_000];
    img.read_at(&mut b, 1000).unwrap();
    assert!(b.iter().all(|&x| x == 3));
    assert_eq!(vmdk::check(&p, false).unwrap().exit_code(), 0);
}

#[test]
fn test_model_other_grain_sizes() {
    // 8 KiB grains (a GT covers 4 MiB, so writes cross many tables) and 1 MiB grains.
    for (grain, size) in [(16u64, 21 * MIB + 512), (2048, 40 * MIB)] {
        let d = Scratch::new(&format!("model-grain{grain}"));
        let p = d.path("g.vmdk");
        let mut o = CreateOptions::new(Subformat::MonolithicSparse, size);
        o.grain_sectors = grain;
        o.zeroed_grain = grain == 16;
        vmdk::create(&p, &o).unwrap();
        let mut model = vec![0u8; size as usize];
        run_model(&p, &mut model, grain, 1500);
        assert_eq!(vmdk::check(&p, false).unwrap().exit_code(), 0, "grain {grain}");
        qemu_agrees(&d, &p, &model);
    }
}
