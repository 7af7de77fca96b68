//! Interoperability with qemu-img in both directions, for every subformat.

mod common;
use common::*;
use vmdk::{AnyImage, CreateOptions, Image, Subformat, Target};

const SMALL: u64 = 9 * 1024 * 1024 + 512 * 7; // not a multiple of the grain
const SPLIT: u64 = (2 << 30) + 3 * 1024 * 1024;

fn offsets(size: u64) -> Vec<u64> {
    let mut v = vec![0, 100_000, 1_500_001, 3 << 20];
    if size > (1 << 30) {
        v.extend([(2 << 30) - 200_000, (1 << 30) + 12345]);
    }
    v.push(size - 400_000);
    v
}

fn qemu_subformats() -> Vec<(&'static str, &'static str, u64)> {
    vec![
        ("monolithicSparse", "subformat=monolithicSparse", SMALL),
        ("zeroed", "subformat=monolithicSparse,zeroed_grain=on", SMALL),
        ("compat6", "subformat=monolithicSparse,compat6=on", SMALL),
        ("monolithicFlat", "subformat=monolithicFlat", SMALL),
        ("streamOptimized", "subformat=streamOptimized", SMALL),
        ("twoGbMaxExtentSparse", "subformat=twoGbMaxExtentSparse", SPLIT),
        ("twoGbMaxExtentFlat", "subformat=twoGbMaxExtentFlat", SPLIT),
    ]
}

#[test]
fn test_reads_every_qemu_subformat() {
    if !have_qemu("test_reads_every_qemu_subformat") {
        return;
    }
    let d = Scratch::new("qread");
    for (name, opts, size) in qemu_subformats() {
        let src = d.path(&format!("{name}.raw"));
        mixed_raw(&src, size, &offsets(size), 7);
        let img = d.path(&format!("{name}.vmdk"));
        qemu_ok(&["convert", "-f", "raw", "-O", "vmdk", "-o", opts, s(&src), s(&img)]);
        // qemu's own view as the oracle.
        let back = d.path(&format!("{name}.back.raw"));
        qemu_ok(&["convert", "-f", "vmdk", "-O", "raw", s(&img), s(&back)]);
        let i = Image::open(&img).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_same_as_raw(&i, &back);
        assert_same_as_raw(&i, &src);
        let rep = vmdk::check(&img, false).unwrap();
        assert_eq!(rep.exit_code(), 0, "{name}: our check of qemu's image: {rep:?}");
    }
}

#[test]
fn test_writes_every_subformat_for_qemu() {
    if !have_qemu("test_writes_every_subformat_for_qemu") {
        return;
    }
    let d = Scratch::new("qwrite");
    for sf in Subformat::ALL {
        let size =
            if matches!(sf, Subformat::TwoGbMaxExtentSparse | Subformat::TwoGbMaxExtentFlat) { SPLIT } else { SMALL };
        let src = d.path(&format!("{}.raw", sf.as_str()));
        mixed_raw(&src, size, &offsets(size), 11);
        let dst = d.path(&format!("{}.vmdk", sf.as_str()));
        let input = AnyImage::open(&src, false).unwrap();
        vmdk::convert(&input, &dst, &Target::Vmdk(CreateOptions::new(sf, 0)), &|_| {}).unwrap();
        let (rc, out) = qemu_img(&["check", s(&dst)]);
        assert_eq!(rc, 0, "{}: qemu-img check: {out}", sf.as_str());
        let (rc, out) = qemu_img(&["compare", "-f", "raw", "-F", "vmdk", s(&src), s(&dst)]);
        assert_eq!(rc, 0, "{}: qemu-img compare: {out}", sf.as_str());
        let info = qemu_ok(&["info", s(&dst)]);
        assert!(info.contains(&format!("create type: {}", sf.as_str())), "{info}");
        // And back to raw through our own reader.
        let back = d.path(&format!("{}.back.raw", sf.as_str()));
        vmdk::convert(&AnyImage::open(&dst, false).unwrap(), &back, &Target::Raw, &|_| {}).unwrap();
        let (rc, out) = qemu_img(&["compare", "-f", "raw", "-F", "raw", s(&src), s(&back)]);
        assert_eq!(rc, 0, "{}: back to raw: {out}", sf.as_str());
        assert_eq!(vmdk::check(&dst, false).unwrap().exit_code(), 0, "{}", sf.as_str());
    }
}

#[test]
fn test_qemu_backing_chain_and_zero_writes() {
    if !have_qemu("test_qemu_backing_chain_and_zero_writes") {
        return;
    }
    let d = Scratch::new("qchain");
    let base = d.path("base.vmdk");
    let mid = d.path("mid.vmdk");
    let top = d.path("top.vmdk");
    qemu_ok(&["create", "-f", "vmdk", "-o", "zeroed_grain=on", s(&base), "8M"]);
    let io = |img: &std::path::Path, cmd: &str| {
        let (rc, out) = run("qemu-io", &["-f", "vmdk", "-c", cmd, s(img)]);
        assert_eq!(rc, 0, "qemu-io {cmd}: {out}");
    };
    io(&base, "write -P 0x11 0 4M");
    qemu_ok(&["create", "-f", "vmdk", "-o", "zeroed_grain=on", "-b", "base.vmdk", "-F", "vmdk", s(&mid)]);
    io(&mid, "write -P 0x22 1M 100k");
    io(&mid, "write -z 2M 128k");
    qemu_ok(&["create", "-f", "vmdk", "-b", "mid.vmdk", "-F", "vmdk", s(&top)]);
    io(&top, "write -P 0x33 1000 5000");
    io(&top, "write -P 0x44 7M 64k");
    let back = d.path("top.raw");
    qemu_ok(&["convert", "-f", "vmdk", "-O", "raw", s(&top), s(&back)]);
    let img = Image::open(&top).unwrap();
    assert_eq!(img.chain_depth(), 2);
    assert_same_as_raw(&img, &back);
    let map = img.map().unwrap();
    assert!(map.iter().any(|r| r.kind == vmdk::MapKind::Zero { depth: 1 }), "{map:?}");
    assert!(map.iter().any(|r| r.kind == vmdk::MapKind::Data { depth: 2 }), "{map:?}");
    // qemu also makes split-sparse and streamOptimized children of a VMDK.
    for sf in ["twoGbMaxExtentSparse", "streamOptimized"] {
        let c = d.path(&format!("c-{sf}.vmdk"));
        qemu_ok(&["create", "-f", "vmdk", "-o", &format!("subformat={sf}"), "-b", "mid.vmdk", "-F", "vmdk", s(&c)]);
        io(&c, "write -P 0x55 1M 128k");
        io(&c, "write -P 0x66 6M 64k");
        let back = d.path(&format!("c-{sf}.raw"));
        qemu_ok(&["convert", "-f", "vmdk", "-O", "raw", s(&c), s(&back)]);
        let img = Image::open(&c).unwrap();
        assert_eq!(img.chain_depth(), 2, "{sf}");
        assert_same_as_raw(&img, &back);
    }
}

#[test]
fn test_our_delta_chain_for_qemu() {
    if !have_qemu("test_our_delta_chain_for_qemu") {
        return;
    }
    let d = Scratch::new("ochain");
    let base = d.path("base.vmdk");
    vmdk::create(&base, &CreateOptions::new(Subformat::MonolithicSparse, 8 << 20)).unwrap();
    {
        let b = Image::open_rw(&base).unwrap();
        b.write_at(&vec![0x5A; 3 << 20], 1 << 20).unwrap();
        b.flush().unwrap();
    }
    let child = d.path("child.vmdk");
    vmdk::snapshot(&base, &child, Subformat::MonolithicSparse, false).unwrap();
    {
        let c = Image::open_rw(&child).unwrap();
        c.write_at(&[0xC3; 7000], (2 << 20) - 3000).unwrap();
        c.write_zeroes(3 << 20, 64 << 10).unwrap();
        c.flush().unwrap();
    }
    assert_eq!(qemu_img(&["check", s(&child)]).0, 0);
    let back = d.path("child.raw");
    qemu_ok(&["convert", "-f", "vmdk", "-O", "raw", s(&child), s(&back)]);
    assert_same_as_raw(&Image::open(&child).unwrap(), &back);
    let info = qemu_ok(&["info", "--backing-chain", s(&child)]);
    assert!(info.contains("backing file: base.vmdk"), "{info}");
    // Commit into the base: the base now shows the child's view, and the child still opens.
    vmdk::commit(&child, &|_| {}).unwrap();
    assert_same_as_raw(&Image::open(&base).unwrap(), &back);
    assert_same_as_raw(&Image::open(&child).unwrap(), &back);
    assert_eq!(qemu_img(&["compare", "-f", "raw", "-F", "vmdk", s(&back), s(&base)]).0, 0);
    assert_eq!(qemu_img(&["check", s(&base)]).0, 0);
}

#[test]
fn test_rdonly_noaccess_zero_extents() {
    let d = Scratch::new("access");
    let a = d.path("a-flat.vmdk");
    let b = d.path("b.vmdk");
    std::fs::write(&a, vec![0x61u8; 8 << 20]).unwrap();
    vmdk::create(&b, &CreateOptions::new(Subformat::MonolithicSparse, 8 << 20)).unwrap();
    {
        let i = Image::open_rw(&b).unwrap();
        i.write_at(b"sparse!", 0).unwrap();
    }
    let desc = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"custom\"\n\n\
                RW 16384 FLAT \"a-flat.vmdk\" 0\nRDONLY 16384 SPARSE \"b.vmdk\"\nRW 2048 ZERO\nNOACCESS 2048 ZERO\n";
    let p = d.path("mixed.vmdk");
    std::fs::write(&p, desc).unwrap();
    let i = Image::open_rw(&p).unwrap();
    assert_eq!(i.size(), (16384 + 16384 + 2048 + 2048) * 512);
    let mut buf = [0u8; 7];
    i.read_at(&mut buf, 8 << 20).unwrap();
    assert_eq!(&buf, b"sparse!");
    i.write_at(b"ok", 0).unwrap();
    let e = i.write_at(b"no", (8 << 20) + 512).unwrap_err();
    assert!(e.to_string().contains("RDONLY"), "{e}");
    // A write spanning RW and RDONLY is refused as a whole.
    let e = i.write_at(&[1; 1024], (8 << 20) - 512).unwrap_err();
    assert!(matches!(e, vmdk::Error::ReadOnlyExtent { .. }), "{e}");
    let mut one = [9u8; 1];
    i.read_at(&mut one, (8 << 20) - 512).unwrap();
    assert_eq!(one[0], 0x61, "refused write must not change anything");
    let mut z = [1u8; 512];
    i.read_at(&mut z, 16 << 20).unwrap();
    assert!(z.iter().all(|&x| x == 0));
    assert!(i.write_at(b"x", 16 << 20).is_err());
    let e = i.read_at(&mut z, (17 << 20) + 512).unwrap_err();
    assert!(matches!(e, vmdk::Error::NoAccess { .. }), "{e}");
    let map = i.map().unwrap();
    assert_eq!(map.last().unwrap().kind, vmdk::MapKind::NoAccess);
}

#[test]
fn test_vmware_stream_with_empty_grain_tables() {
    if !have_qemu("test_vmware_stream_with_empty_grain_tables") {
        return;
    }
    // 300 MiB with data in only a few places: most grain tables are empty (GD entry 0), one GT is
    // full, and the last grain is partial.
    let d = Scratch::new("stream-gaps");
    let size = (300 << 20) + 1536;
    let src = d.path("gaps.raw");
    mixed_raw(&src, size, &[0, 100 << 20, (100 << 20) + 400_000, 250 << 20, size - 300_000], 3);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        let full: Vec<u8> = (0..(32u32 << 20)).map(|i| (i % 253) as u8).collect();
        f.write_all_at(&full, 160 << 20).unwrap();
    }
    let dst = d.path("gaps.vmdk");
    let o = CreateOptions::new(Subformat::StreamOptimized, 0);
    vmdk::convert(&AnyImage::open(&src, false).unwrap(), &dst, &Target::Vmdk(o), &|_| {}).unwrap();
    assert_eq!(qemu_img(&["check", s(&dst)]).0, 0);
    let (rc, out) = qemu_img(&["compare", "-f", "raw", "-F", "vmdk", s(&src), s(&dst)]);
    assert_eq!(rc, 0, "{out}");
    let img = Image::open(&dst).unwrap();
    assert_same_as_raw(&img, &src);
    // Stream -> other subformats straight from the stream.
    for sf in [Subformat::MonolithicSparse, Subformat::MonolithicFlat] {
        let p = d.path(&format!("from-stream-{}.vmdk", sf.as_str()));
        vmdk::convert(&AnyImage::open(&dst, false).unwrap(), &p, &Target::Vmdk(CreateOptions::new(sf, 0)), &|_| {})
            .unwrap();
        let (rc, out) = qemu_img(&["compare", "-f", "raw", "-F", "vmdk", s(&src), s(&p)]);
        assert_eq!(rc, 0, "{out}");
    }
}
