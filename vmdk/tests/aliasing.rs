//! Issue 11 items 2-4: a copied or renamed single-file image must read and write only itself, the
//! sparse header wins over the embedded descriptor, and `check -r` never invents data.
//! Oracle: qemu-img (which opens a sparse file as one extent of itself, with the header's capacity).

mod common;

use common::{have_qemu, qemu_ok, s, Scratch};
use std::os::unix::fs::FileExt;
use std::path::Path;
use vmdk::header::SparseHeader;
use vmdk::{CreateOptions, Image, Subformat};

const MIB: u64 = 1 << 20;

fn header(p: &Path) -> SparseHeader {
    let mut b = [0u8; 512];
    std::fs::File::open(p).unwrap().read_exact_at(&mut b, 0).unwrap();
    SparseHeader::parse(&b).unwrap()
}

/// Rewrites the embedded descriptor text of a sparse file in place.
fn edit_embedded(p: &Path, f: impl FnOnce(&str) -> String) {
    let h = header(p);
    let file = std::fs::OpenOptions::new().read(true).write(true).open(p).unwrap();
    let mut area = vec![0u8; (h.desc_size * 512) as usize];
    file.read_exact_at(&mut area, h.desc_offset * 512).unwrap();
    let end = area.iter().position(|&b| b == 0).unwrap_or(area.len());
    let text = f(std::str::from_utf8(&area[..end]).unwrap());
    assert!(text.len() <= area.len());
    let mut new = text.into_bytes();
    new.resize(area.len(), 0);
    file.write_all_at(&new, h.desc_offset * 512).unwrap();
}

fn read_all(p: &Path) -> Vec<u8> {
    let i = Image::open(p).unwrap();
    let mut b = vec![0u8; i.size() as usize];
    i.read_at(&mut b, 0).unwrap();
    b
}

/// What qemu-img says the guest sees.
fn qemu_raw(d: &Scratch, p: &Path) -> Vec<u8> {
    let out = d.path(&format!("{}.qemu.raw", p.file_name().unwrap().to_string_lossy()));
    let _ = std::fs::remove_file(&out);
    qemu_ok(&["convert", "-O", "raw", s(p), s(&out)]);
    std::fs::read(out).unwrap()
}

fn sparse_with_data(p: &Path, size: u64, byte: u8) {
    vmdk::create(p, &CreateOptions::new(Subformat::MonolithicSparse, size)).unwrap();
    let i = Image::open_rw(p).unwrap();
    i.write_at(&vec![byte; 3 * 65536], 65536).unwrap();
    i.flush().unwrap();
}

#[test]
fn test_copied_monolithic_sparse_is_itself() {
    let d = Scratch::new("alias-copy");
    let a = d.path("a.vmdk");
    let b = d.path("b.vmdk");
    sparse_with_data(&a, 8 * MIB, 0xAA);
    std::fs::copy(&a, &b).unwrap();
    let a_before = std::fs::read(&a).unwrap();
    {
        let img = Image::open_rw(&b).unwrap();
        img.write_at(&[0xBB; 4096], 65536).unwrap();
        img.write_at(&[0xCC; 4096], 7 * MIB).unwrap();
        img.flush().unwrap();
    }
    assert!(std::fs::read(&a).unwrap() == a_before, "writing through b.vmdk changed a.vmdk");
    let got = read_all(&b);
    assert_eq!(&got[65536..65536 + 4096], &[0xBB; 4096][..]);
    assert_eq!(got[65536 + 4096], 0xAA);
    assert_eq!(&got[7 * MIB as usize..7 * MIB as usize + 4096], &[0xCC; 4096][..]);
    std::fs::remove_file(&a).unwrap();
    assert!(read_all(&b) == got, "b.vmdk must open and read the same after a.vmdk is removed");
    if have_qemu("test_copied_monolithic_sparse_is_itself") {
        assert!(qemu_raw(&d, &b) == got, "qemu-img reads b.vmdk differently");
    }
}

#[test]
fn test_renamed_stream_optimized_is_itself() {
    let d = Scratch::new("alias-stream");
    let raw = d.path("src.raw");
    let mut data = vec![0u8; 4 * MIB as usize];
    data[..200_000].iter_mut().enumerate().for_each(|(i, b)| *b = (i % 253) as u8 | 1);
    std::fs::write(&raw, &data).unwrap();
    let a = d.path("a.vmdk");
    let src = vmdk::AnyImage::open(&raw, false).unwrap();
    vmdk::convert(&src, &a, &vmdk::Target::Vmdk(CreateOptions::new(Subformat::StreamOptimized, 0)), &|_| {}).unwrap();
    let b = d.path("renamed.vmdk");
    std::fs::rename(&a, &b).unwrap();
    assert!(read_all(&b) == data);
}

#[test]
fn test_image_in_subdirectory_named_with_its_dir() {
    // A hand-written monolithic descriptor naming its extent "sub/one.vmdk" (relative to the
    // working directory, not to the file) must still be the file itself.
    let d = Scratch::new("alias-subdir");
    std::fs::create_dir_all(d.path("sub")).unwrap();
    let p = d.path("sub/one.vmdk");
    sparse_with_data(&p, 8 * MIB, 0x5A);
    edit_embedded(&p, |t| t.replace("\"one.vmdk\"", "\"sub/one.vmdk\""));
    let got = read_all(&p);
    assert_eq!(got[65536], 0x5A);
    let img = Image::open_rw(&p).unwrap();
    img.write_at(&[1; 512], 0).unwrap();
}

/// Mutations of the embedded descriptor that must not change what the disk is.
type Mutation = (&'static str, fn(&str) -> String);

fn embedded_mutations() -> Vec<Mutation> {
    vec![
        ("flat", |t| t.replace("SPARSE \"a.vmdk\"", "FLAT \"a.vmdk\" 0")),
        ("vmfs", |t| t.replace("SPARSE \"a.vmdk\"", "VMFS \"a.vmdk\"")),
        ("smaller", |t| t.replace("RW 16384 SPARSE", "RW 2048 SPARSE")),
        ("larger", |t| t.replace("RW 16384 SPARSE", "RW 32768 SPARSE")),
        ("duplicated", |t| {
            let line = "RW 16384 SPARSE \"a.vmdk\"\n";
            t.replace(line, &line.repeat(5))
        }),
        ("other-file", |t| t.replace("\"a.vmdk\"", "\"victim.raw\"")),
        ("zero", |t| t.replace("SPARSE \"a.vmdk\"", "ZERO")),
    ]
}

#[test]
fn test_header_wins_over_embedded_descriptor() {
    let qemu = have_qemu("test_header_wins_over_embedded_descriptor");
    for (name, f) in embedded_mutations() {
        let d = Scratch::new(&format!("trust-{name}"));
        let a = d.path("a.vmdk");
        sparse_with_data(&a, 8 * MIB, 0x77);
        let victim = d.path("victim.raw");
        std::fs::write(&victim, vec![0x99u8; 64 * MIB as usize]).unwrap();
        let want = read_all(&a);
        edit_embedded(&a, f);
        let img = Image::open(&a).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(img.size(), 8 * MIB, "{name}: the header's capacity is the size");
        let got = read_all(&a);
        assert!(!got.starts_with(b"KDMV"), "{name}: metadata returned as disk data");
        assert!(got == want, "{name}: content changed");
        if qemu {
            assert!(qemu_raw(&d, &a) == got, "{name}: qemu-img disagrees");
        }
        let rep = vmdk::check(&a, false).unwrap();
        if name == "other-file" {
            // Another name is what every copy carries: a note, not an error.
            assert!(rep.corruptions.is_empty() && rep.notes.iter().any(|n| n.contains("victim.raw")), "{rep:?}");
        } else {
            assert!(
                rep.corruptions.iter().any(|c| c.contains("descriptor")),
                "{name}: check must report the descriptor/header disagreement: {rep:?}"
            );
        }
        // Writing goes to the file itself.
        let v_before = std::fs::read(&victim).unwrap();
        let img = Image::open_rw(&a).unwrap();
        img.write_at(&[0x42; 512], 0).unwrap();
        img.flush().unwrap();
        drop(img);
        assert!(std::fs::read(&victim).unwrap() == v_before, "{name}: wrote to another file");
        assert_eq!(read_all(&a)[..512], [0x42; 512], "{name}");
        // Repair rewrites the descriptor from the header; afterwards check is clean.
        let rep = vmdk::check(&a, true).unwrap();
        assert!(rep.corruptions.is_empty(), "{name}: after repair: {rep:?}");
    }
}

#[test]
fn test_separate_descriptor_sparse_size_and_duplicates() {
    let d = Scratch::new("trust-separate");
    let p = d.path("t.vmdk");
    vmdk::create(&p, &CreateOptions::new(Subformat::TwoGbMaxExtentSparse, 3 << 30)).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains("RW 4194304 SPARSE \"t-s001.vmdk\""), "{text}");
    // "+5" is not a number of sectors.
    std::fs::write(&p, text.replace("RW 4194304 SPARSE", "RW +5 SPARSE")).unwrap();
    assert!(Image::open(&p).is_err(), "size \"+5\" must be refused");
    // A smaller SPARSE size: the header's capacity wins (as qemu-img), check reports it.
    std::fs::write(&p, text.replace("RW 4194304 SPARSE", "RW 5 SPARSE")).unwrap();
    let img = Image::open(&p).unwrap();
    assert_eq!(img.size(), 3 << 30);
    drop(img);
    let rep = vmdk::check(&p, false).unwrap();
    assert!(rep.corruptions.iter().any(|c| c.contains("descriptor")), "{rep:?}");
    if have_qemu("test_separate_descriptor_sparse_size_and_duplicates") {
        let out = qemu_ok(&["info", "--output", "json", s(&p)]);
        assert!(out.contains(&format!("\"virtual-size\": {}", 3u64 << 30)), "{out}");
    }
    // The same sparse file twice would alias its grain tables: refused.
    let line = "RW 4194304 SPARSE \"t-s001.vmdk\"\n";
    std::fs::write(&p, text.replace(line, &line.repeat(3))).unwrap();
    let e = Image::open(&p).unwrap_err().to_string();
    assert!(e.contains("more than once"), "{e}");
    // A FLAT extent over a sparse file returns its header as data. The descriptor is the
    // authority for flat extents (a guest may write a KDMV header to its own flat disk, and that
    // must not make the image unopenable), so it opens, and check reports it.
    std::fs::write(&p, text.replace("RW 4194304 SPARSE \"t-s001.vmdk\"", "RW 4194304 FLAT \"t-s001.vmdk\" 0")).unwrap();
    let rep = vmdk::check(&p, false).unwrap();
    assert!(rep.corruptions.iter().any(|c| c.contains("sparse header")), "{rep:?}");
    // A FLAT extent naming the descriptor itself: refused.
    std::fs::write(&p, text.replace("RW 4194304 SPARSE \"t-s001.vmdk\"", "RW 4194304 FLAT \"t.vmdk\" 0")).unwrap();
    assert!(Image::open(&p).is_err(), "FLAT over the descriptor must be refused");
}

#[test]
fn test_repair_never_extends_flat_file_past_metadata() {
    let d = Scratch::new("repair-flat");
    let p = d.path("f.vmdk");
    vmdk::create(&p, &CreateOptions::new(Subformat::MonolithicFlat, 4 * MIB)).unwrap();
    let flat = d.path("f-flat.vmdk");
    let text = std::fs::read_to_string(&p).unwrap();
    // An offset typo: the extent now lies 2 TiB into its file.
    std::fs::write(&p, text.replace("\"f-flat.vmdk\" 0", "\"f-flat.vmdk\" 4294967296")).unwrap();
    let before = std::fs::metadata(&flat).unwrap().len();
    let rep = vmdk::check(&p, true).unwrap();
    assert_eq!(std::fs::metadata(&flat).unwrap().len(), before, "repair grew the flat file");
    assert!(!rep.corruptions.is_empty(), "the short flat extent must still be reported: {rep:?}");
    assert_eq!(rep.exit_code(), 2);
}
